-- Joins a person to a room, atomically (see presence.rs for the rules, which this mirrors).
-- KEYS: 1 people (hash key -> person JSON), 2 sessions (hash token -> key),
--       3 conns (hash conn -> key), 4 expiry (zset key -> end of grace period),
--       5 instances, 6 presence (hash: v, the version of the latest change)
-- ARGV: 1 conn, 2 instance, 3 session presented in the handshake ('' if none),
--       4 a fresh session token, 5 now (ms), 6 the presence channel, 7 the publish command,
--       8.. candidate (name, key) pairs: the nickname, then its variants
-- A new person is a change: it gets the next presence version, and is published on the presence
-- channel in the same step, so that every instance receives the room's changes in version order.
-- Returns JSON {k: kind, u: username, s: session, r: replaced conn or '', n: [names], v: version};
-- kind 0 new, 1 resumed, -1 taken.
local conn, inst, auth, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local version = redis.call('HGET', KEYS[6], 'v') or '0'

local function names()
  local out = {}
  for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
    table.insert(out, cjson.decode(raw).u)
  end
  return out
end

local function reply(kind, p, replaced)
  return cjson.encode({k = kind, u = p.u, s = p.s, r = replaced, n = names(), v = version})
end

-- The next version: after the last, and from the clock, so that versions keep growing when Redis
-- lost the last one (as message ids do).
local function changed(kind, username)
  version = string.format('%.0f', math.max(tonumber(version) + 1, tonumber(ARGV[5]) * 1000))
  redis.call('HSET', KEYS[6], 'v', version)
  local change = cjson.encode({k = kind, u = username, n = redis.call('HLEN', KEYS[1]), v = version})
  redis.call(ARGV[7], ARGV[6], change)
end

local function take_over(key, new_session)
  local p = cjson.decode(redis.call('HGET', KEYS[1], key))
  local replaced = ''
  if p.c ~= '' and p.c ~= conn then
    replaced = p.c
    redis.call('HDEL', KEYS[3], p.c)
  end
  if new_session then
    redis.call('HDEL', KEYS[2], p.s)
    p.s = fresh
    redis.call('HSET', KEYS[2], fresh, key)
  end
  p.c, p.i, p.x = conn, inst, 0
  redis.call('HSET', KEYS[1], key, cjson.encode(p))
  redis.call('HSET', KEYS[3], conn, key)
  redis.call('ZREM', KEYS[4], key)
  return reply(1, p, replaced)
end

if auth ~= '' then
  local key = redis.call('HGET', KEYS[2], auth)
  if key then return take_over(key, false) end
end

local held = redis.call('HGET', KEYS[1], ARGV[9])
if held and cjson.decode(held).c == '' then
  return take_over(ARGV[9], true)
end

for i = 8, #ARGV, 2 do
  local name, key = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[1], key) == 0 then
    local p = {u = name, s = fresh, i = inst, c = conn, x = 0}
    redis.call('HSET', KEYS[1], key, cjson.encode(p))
    redis.call('HSET', KEYS[2], fresh, key)
    redis.call('HSET', KEYS[3], conn, key)
    changed('j', name)
    return reply(0, p, '')
  end
end
return cjson.encode({k = -1, u = '', s = '', r = '', n = {}, v = version})
