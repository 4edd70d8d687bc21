-- Stores a message and publishes it, in one step, so that every instance receives a room's
-- messages in id order (Redis runs scripts one at a time and delivers PUBLISH in that order).
-- KEYS: 1 history (list of "<id> <ts> <json>"), 2 meta (hash: last, floor)
-- ARGV: 1 now (ms), 2 message JSON {username, message}, 3 history length, 4 channel,
--       5 sender connection (so that its instance does not echo the message to the sender),
--       6 the publish command: PUBLISH, or SPUBLISH in a Redis Cluster (the channel shares the
--       room's hash tag, so it lives on this shard)
-- Returns {id, ts} as strings: ids exceed what Lua prints exactly with tostring().
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local id = math.max(last + 1, now * 1000)
local id_s = string.format('%.0f', id)
local ts_s = string.format('%.0f', now)
redis.call('HSET', KEYS[2], 'last', id_s)
redis.call('HSETNX', KEYS[2], 'floor', string.format('%.0f', now * 1000 - 1))
local item = id_s .. ' ' .. ts_s .. ' ' .. ARGV[2]
redis.call('RPUSH', KEYS[1], item)
-- Trim to the history length; the newest dropped id becomes the floor. (LPOP one at a time:
-- LPOP with a count needs Redis 6.2.)
local excess = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[3])
local dropped = nil
while excess > 0 do
  dropped = redis.call('LPOP', KEYS[1])
  excess = excess - 1
end
if dropped then
  redis.call('HSET', KEYS[2], 'floor', string.match(dropped, '^(%d+)'))
end
redis.call(ARGV[6], ARGV[4], ARGV[5] .. ' ' .. item)
return {id_s, ts_s}
