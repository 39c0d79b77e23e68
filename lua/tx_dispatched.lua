--! use: tx
-- tx_dispatched: record that the claim holder sent these participants' handlers.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] claim token, [5] lease ms,
--       [6..] participants just dispatched.
-- Reply: {held 0|1, done 0|1}: held is 0 when the claim was lost (lease ran out, or
-- another process took it); done is 1 once every participant's handler is sent. Or
-- {"corrupt", field, value}.
-- Atomic because the record must only be written by the current claim holder, and the
-- lease is extended in the same step so a slow but live dispatcher keeps its claim. A
-- participant recorded twice (a retry after a lost reply) counts once.
local now, err = tx_now(ARGV[1])
if err then
  return err
end
local lease = tonumber(ARGV[5])
if not lease or lease < 1 or lease > TX_MAX then
  return {'bad_arg', 'lease', ARGV[5]}
end
local s, e = tx_load()
if e then
  return e
end
if not s or s.claim ~= ARGV[4] or s.claim_until <= now or s.outcome == 'pending' then
  return {0, 0}
end
local seen = {}
for i = 6, #ARGV, 200 do
  local batch, fields = {}, {}
  for j = i, math.min(i + 199, #ARGV) do
    batch[#batch + 1] = ARGV[j]
    fields[#fields + 1] = 'm:' .. ARGV[j]
    fields[#fields + 1] = 'd:' .. ARGV[j]
  end
  local f = redis.call('HMGET', KEYS[1], unpack(fields))
  for k, p in ipairs(batch) do
    if f[2 * k - 1] == '1' and not f[2 * k] and not seen[p] then
      seen[p] = true
      s.ndisp = s.ndisp + 1
      tx_set(s, 'd:' .. p, '1')
    end
  end
end
tx_set(s, 'ndisp', s.ndisp)
local members = 0
if s.named == 1 then
  members = s.n
end
local done = 0
if s.ndisp >= members then
  done = 1
  tx_set(s, 'dispatched', 1)
  tx_set(s, 'claim', '')
else
  tx_set(s, 'claim_until', now + lease)
end
e = tx_write(s)
if e then
  return e
end
return {1, done}
