--! use: clock
-- dlq_claim: take one dead-letter entry for a replay (one replayer at a time).
-- KEYS: [1] S stream, [2] I index, [3] N stats, [4] C claims: entry id ->
--   "<token>|<lease end ms>".
-- ARGV: [1] clock override, [2] entry id, [3] the replayer's token, [4] lease ms.
-- Reply: {'ok', field, value, ...} (the entry), {'gone'} (not in the store: replayed
--   or purged already), or {'busy', ms} (another replayer holds it for ms more).
-- Atomic because: two operators replaying one entry at once must not both publish it;
-- a replayer that dies keeps the claim only until its lease ends, so the entry stays
-- in the store and can be replayed again (never lost).
local now = now_ms(ARGV[1])
local lease = tonumber(ARGV[4])
if not lease or lease < 1 or ARGV[3] == '' then
  return redis.error_reply('ERR dlq_claim: bad arguments')
end
local held = redis.call('HGET', KEYS[4], ARGV[2])
if held then
  local sep = string.find(held, '|', 1, true)
  local who, till = string.sub(held, 1, sep - 1), tonumber(string.sub(held, sep + 1)) or 0
  if who ~= ARGV[3] and till > now then
    return { 'busy', till - now }
  end
end
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #found == 0 then
  redis.call('HDEL', KEYS[4], ARGV[2])
  return { 'gone' }
end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3] .. '|' .. (now + lease))
local reply = { 'ok' }
for _, v in ipairs(found[1][2]) do reply[#reply + 1] = v end
return reply
