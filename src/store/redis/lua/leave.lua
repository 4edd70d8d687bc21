-- A connection leaves on purpose: its person is removed now, under the next presence version,
-- published on the presence channel (see join.lua).
-- KEYS: 1 people, 2 sessions, 3 conns, 4 expiry, 5 instances, 6 presence.
-- ARGV: 1 conn, 2 now (ms), 3 the presence channel, 4 the publish command.
-- Returns {username, people left, version} or nil when the connection held nobody.
local key = redis.call('HGET', KEYS[3], ARGV[1])
if not key then return nil end
redis.call('HDEL', KEYS[3], ARGV[1])
local raw = redis.call('HGET', KEYS[1], key)
if not raw then return nil end
local p = cjson.decode(raw)
if p.c ~= ARGV[1] then return nil end
redis.call('HDEL', KEYS[1], key)
redis.call('HDEL', KEYS[2], p.s)
redis.call('ZREM', KEYS[4], key)
local last = tonumber(redis.call('HGET', KEYS[6], 'v') or '0')
local version = string.format('%.0f', math.max(last + 1, tonumber(ARGV[2]) * 1000))
redis.call('HSET', KEYS[6], 'v', version)
local left = redis.call('HLEN', KEYS[1])
redis.call(ARGV[4], ARGV[3], cjson.encode({k = 'l', u = p.u, n = left, v = version}))
return {p.u, left, version}
