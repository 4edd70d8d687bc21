-- After an outage, drops the people this instance holds in Redis through connections it no
-- longer has (their leave or drop could not be recorded while Redis was away): they start
-- their grace period now, as if they had just dropped.
-- KEYS: 1 people, 2 sessions, 3 conns, 4 expiry. ARGV: 1 instance, 2 now + grace (ms),
-- 3.. the connections this instance has. Returns how many were dropped.
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
local dropped = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local p = cjson.decode(all[i + 1])
  if p.i == ARGV[1] and p.c ~= '' and not live[p.c] then
    redis.call('HDEL', KEYS[3], p.c)
    p.c, p.x = '', tonumber(ARGV[2])
    redis.call('HSET', KEYS[1], all[i], cjson.encode(p))
    redis.call('ZADD', KEYS[4], p.x, all[i])
    dropped = dropped + 1
  end
end
return dropped
