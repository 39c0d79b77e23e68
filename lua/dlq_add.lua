--! use: clock
-- dlq_add: store a task that failed for good in its queue's dead-letter stream.
-- KEYS: [1] S the stream, [2] I index: task id -> entry id, [3] N stats (added,
--   dropped, replayed, purged); all of one queue, one hash tag.
-- ARGV: [1] clock override, [2] the most entries kept, [3] the task id,
--   [4..] the entry's fields and values (which include 'id', the task id).
-- Reply: {entry id, 1} when stored, {entry id, 0} when that task's entry is already
--   there (a worker killed after the write and before the ack runs the task again).
-- Atomic because: the cap, the index and the entry must agree; at the cap the oldest
-- entries are dropped and counted, so the store stays bounded and nothing leaves it
-- silently. Every check comes before the first write.
local now = now_ms(ARGV[1])
local maxlen = tonumber(ARGV[2])
if not maxlen or maxlen < 1 or ARGV[3] == '' or (#ARGV - 3) % 2 ~= 0 then
  return redis.error_reply('ERR dlq_add: bad arguments')
end
local have = redis.call('HGET', KEYS[2], ARGV[3])
if have then
  return { have, 0 }
end
local len = redis.call('XLEN', KEYS[1])
if len >= maxlen then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - maxlen + 1)
  for _, e in ipairs(old) do
    redis.call('XDEL', KEYS[1], e[1])
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'id' then redis.call('HDEL', KEYS[2], f[i + 1]) end
    end
  end
  redis.call('HINCRBY', KEYS[3], 'dropped', #old)
end
local args = { 'XADD', KEYS[1], '*', 'time', now }
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('HSET', KEYS[2], ARGV[3], id)
redis.call('HINCRBY', KEYS[3], 'added', 1)
return { id, 1 }
