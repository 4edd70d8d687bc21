-- A connection leaves on purpose: its person is removed now.
-- KEYS: 1 people, 2 sessions, 3 conns, 4 expiry. ARGV: 1 conn
-- Returns {username, people left} or nil when the connection held nobody.
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
return {p.u, redis.call('HLEN', KEYS[1])}
