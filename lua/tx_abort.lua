--! use: tx
-- tx_abort: decide ROLLBACK from outside the votes (e.g. the launcher failed to send).
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] reason.
-- Reply: the tx view (the earlier decision if there was one); {"unknown"}, {"corrupt",
-- field, value} or {"noperm", ...}.
-- Atomic because the abort must not overwrite a decision made a moment earlier.
local now, err = tx_now(ARGV[1])
if err then
  return err
end
local s, e = tx_load()
if e then
  return e
end
if not s then
  return {'unknown'}
end
tx_notice_deadline(s, now)
if s.outcome == 'pending' then
  tx_decide(s, 'rollback', 'abort', '', ARGV[4], now)
end
e = tx_write(s)
if e then
  return e
end
return tx_view('ok', s, now)
