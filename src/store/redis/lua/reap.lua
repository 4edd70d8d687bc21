-- Ends grace periods, and drops the connections of instances that stopped heart-beating.
-- KEYS: 1 people, 2 sessions, 3 conns, 4 expiry, 5 instances (zset instance -> deadline),
--       6 presence
-- ARGV: 1 now (ms), 2 grace period (ms), 3 the presence channel, 4 the publish command
-- Each person whose grace period ended leaves under the next presence version, published on the
-- presence channel (see join.lua).
-- Returns JSON [{u: username, n: people left after it, v: version}, ...]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local version = tonumber(redis.call('HGET', KEYS[6], 'v') or '0')

-- People held by a dead instance are treated as dropped at its deadline: they may reconnect to
-- another instance within the grace period and keep their place.
local dead = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'WITHSCORES')
if #dead > 0 then
  local deadline = {}
  for i = 1, #dead, 2 do deadline[dead[i]] = tonumber(dead[i + 1]) end
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local p = cjson.decode(all[i + 1])
    if p.c ~= '' and deadline[p.i] then
      redis.call('HDEL', KEYS[3], p.c)
      p.c, p.x = '', deadline[p.i] + grace
      redis.call('HSET', KEYS[1], all[i], cjson.encode(p))
      redis.call('ZADD', KEYS[4], p.x, all[i])
    end
  end
  for i = 1, #dead, 2 do redis.call('ZREM', KEYS[5], dead[i]) end
end

local left = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 500)
for _, key in ipairs(expired) do
  redis.call('ZREM', KEYS[4], key)
  local raw = redis.call('HGET', KEYS[1], key)
  if raw then
    local p = cjson.decode(raw)
    if p.c == '' then
      redis.call('HDEL', KEYS[1], key)
      redis.call('HDEL', KEYS[2], p.s)
      version = math.max(version + 1, now * 1000)
      local v = string.format('%.0f', version)
      redis.call('HSET', KEYS[6], 'v', v)
      local change = {k = 'l', u = p.u, n = redis.call('HLEN', KEYS[1]), v = v}
      redis.call(ARGV[4], ARGV[3], cjson.encode(change))
      table.insert(left, change)
    end
  end
end
if #left == 0 then return '[]' end
return cjson.encode(left)
