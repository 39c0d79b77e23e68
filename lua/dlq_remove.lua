-- dlq_remove: take entries out of a dead-letter stream, after a replay or a purge.
-- KEYS: [1] S stream, [2] I index, [3] N stats, [4] C claims (see dlq_claim.lua).
-- ARGV: [1] unused (every script's first ARGV is the clock override), [2] why: 'replayed' (ARGV[3] must hold the claim) or
--   'purged', [3] the replayer's token ('' for a purge), [4..] entry ids.
-- Reply: how many entries were removed.
-- Atomic because: the entry, its index and its claim go together, and the counters
-- say what left the store and why.
local why = ARGV[2]
if why ~= 'replayed' and why ~= 'purged' then
  return redis.error_reply('ERR dlq_remove: bad reason ' .. tostring(why))
end
local removed = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local held = redis.call('HGET', KEYS[4], id)
  local mine = held and string.sub(held, 1, #ARGV[3] + 1) == ARGV[3] .. '|'
  if why == 'purged' or mine then
    local found = redis.call('XRANGE', KEYS[1], id, id)
    if #found > 0 then
      local f = found[1][2]
      for j = 1, #f, 2 do
        if f[j] == 'id' then redis.call('HDEL', KEYS[2], f[j + 1]) end
      end
      redis.call('XDEL', KEYS[1], id)
      removed = removed + 1
    end
    redis.call('HDEL', KEYS[4], id)
  end
end
if removed > 0 then redis.call('HINCRBY', KEYS[3], why, removed) end
return removed
