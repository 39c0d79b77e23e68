--! use: clock
-- attempt_add: record one attempt of a Celery task, stamped with the server's clock.
-- KEYS[1]: the task's attempt list (redisbreaker/celery/deadletter.py names it).
-- ARGV: [1] clock override ("" = TIME), [2] ttl ms, [3] the attempt (msgpack, from
--   the worker that ran it).
-- Reply: how many attempts are recorded.
-- Atomic because: the entry and its TTL are written together (a list without a TTL
-- would stay forever). Each entry is "<server ms>|<msgpack>".
local now = now_ms(ARGV[1])
local ttl = tonumber(ARGV[2])
if not ttl or ttl < 1 then
  return redis.error_reply('ERR attempt_add: ttl ' .. tostring(ARGV[2]))
end
local n = redis.call('RPUSH', KEYS[1], now .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return n
