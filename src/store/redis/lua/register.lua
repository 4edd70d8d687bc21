-- Puts back a person that this instance holds, after Redis lost its state (a restart without
-- persistence) or after this instance was taken for dead.
-- KEYS: 1 people, 2 sessions, 3 conns, 4 expiry. ARGV: 1 conn, 2 instance, 3 username, 4 key,
-- 5 session. Returns 1 when restored or already right, 0 when the nickname is now someone else's.
local raw = redis.call('HGET', KEYS[1], ARGV[4])
if raw then
  local p = cjson.decode(raw)
  if p.s ~= ARGV[5] then return 0 end
  if p.c ~= '' and p.c ~= ARGV[1] then redis.call('HDEL', KEYS[3], p.c) end
  p.c, p.i, p.x = ARGV[1], ARGV[2], 0
  redis.call('HSET', KEYS[1], ARGV[4], cjson.encode(p))
  redis.call('ZREM', KEYS[4], ARGV[4])
else
  local p = {u = ARGV[3], s = ARGV[5], i = ARGV[2], c = ARGV[1], x = 0}
  redis.call('HSET', KEYS[1], ARGV[4], cjson.encode(p))
end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
