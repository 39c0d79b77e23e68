--! use: clock
-- marker: the birth certificate of the data set under one prefix. It is written once
-- and never expires, so while Redis keeps its data it is always there; when it is
-- missing, Redis lost everything under the prefix (restarted without persistence,
-- flushed, or failed over to an empty replica). See redisbreaker/durability.py.
-- KEYS[1] M  hash, no TTL: token (random, made by whoever created it), created
--   (server ms), replaced (the token its creator had seen before: '' unless this data
--   set replaced one that was lost), by (who created it)
-- ARGV: [1] clock override ("" = TIME), [2] the token to create it with if missing,
--   [3] the token the caller saw last ('' if none), [4] who calls
-- Reply: {token, created, replaced, by, now}
-- Atomic because: when many workers find the marker gone at once, exactly one
-- creates the new one and every other reads it, so all agree on the new data set.
local now = now_ms(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'token', 'created', 'replaced', 'by')
if not v[1] then
  v = {ARGV[2], now, ARGV[3], ARGV[4]}
  redis.call('HSET', KEYS[1], 'token', v[1], 'created', v[2], 'replaced', v[3], 'by', v[4])
end
return {v[1], tonumber(v[2]) or 0, v[3] or '', v[4] or '', now}
