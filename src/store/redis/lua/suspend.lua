-- A connection dropped: its person stays, unheld, until the end of the grace period.
-- KEYS: 1 people, 3 conns, 4 expiry (2 unused, passed for a uniform key list).
-- ARGV: 1 conn, 2 end of the grace period (ms). Returns 1, or 0 when the connection held nobody.
local key = redis.call('HGET', KEYS[3], ARGV[1])
if not key then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
local raw = redis.call('HGET', KEYS[1], key)
if not raw then return 0 end
local p = cjson.decode(raw)
if p.c ~= ARGV[1] then return 0 end
p.c, p.x = '', tonumber(ARGV[2])
redis.call('HSET', KEYS[1], key, cjson.encode(p))
redis.call('ZADD', KEYS[4], p.x, key)
return 1
