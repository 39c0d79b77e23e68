--! use: tx
-- tx_begin: create a transaction.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] n participants, [5] timeout ms,
--       [6] keep ms (how long the decision is kept), [7] payload (opaque bytes for
--       integrations, "" if none), [8] hint appended to a timeout's reason when some
--       never voted ("" if none), [9] begin token (a random id of this begin call),
--       [10..] participant ids if the set is named.
-- Reply: the tx view (lib/tx.lua); {"exists", token} if the id is taken: the token of
-- the begin that took it, so a begin retried after a lost reply recognises its own;
-- {"corrupt", "type", type} if a key of another type holds the name.
-- Atomic because the existence check and the creation must not interleave with a
-- second begin of the same id, and the deadline must be set from the same clock read.
local now, err = tx_now(ARGV[1])
if err then
  return err
end
local kind = redis.call('TYPE', KEYS[1])
kind = kind['ok'] or kind
if kind ~= 'none' then
  if kind ~= 'hash' then
    return {'corrupt', 'type', kind}
  end
  return {'exists', redis.call('HGET', KEYS[1], 'token') or ''}
end
local ok, bad = pcall(function()
  tx_int('n', ARGV[4], 1, TX_MAX)
  tx_int('timeout', ARGV[5], 1, TX_MAX - now)
  tx_int('keep', ARGV[6], 1, TX_MAX)
end)
if not ok then
  return {'bad_arg', bad[1], bad[2]}
end
local n = tonumber(ARGV[4])
local named = 0
if #ARGV > 9 then
  named = 1
  if #ARGV - 9 ~= n then
    return {'bad_arg', 'n', ARGV[4]}
  end
end
-- Pending: no TTL (see lib/tx.lua); the decision sets it.
redis.call('HSET', KEYS[1], 'n', n, 'deadline', now + tonumber(ARGV[5]), 'created', now,
  'keep', ARGV[6], 'named', named, 'payload', ARGV[7], 'hint', ARGV[8], 'token', ARGV[9],
  'yes', 0, 'no', 0, 'acked', 0, 'outcome', 'pending', 'kind', '', 'who', '', 'text', '',
  'at', 0, 'claim', '', 'claim_until', 0, 'dispatched', 0, 'ndisp', 0)
for i = 10, #ARGV, 500 do
  local fields = {}
  for j = i, math.min(i + 499, #ARGV) do
    fields[#fields + 1] = 'm:' .. ARGV[j]
    fields[#fields + 1] = '1'
  end
  redis.call('HSET', KEYS[1], unpack(fields))
end
local s, e = tx_load()
if e then
  return e
end
return tx_view('ok', s, now)
