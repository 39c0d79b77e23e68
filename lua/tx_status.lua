--! use: tx
-- tx_status: read the tally and decision; decide ROLLBACK if the deadline has passed.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] participant to report on ("" none).
-- Reply: the tx view; {"unknown"}, {"corrupt", field, value} or {"noperm", ...}.
-- Atomic because a reader that notices the deadline decides then and there, so no
-- process has to stay alive for the timeout to fire, and the check-and-decide must not
-- race a last vote.
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
if ARGV[4] ~= '' then
  e = tx_participant(s, ARGV[4])
  if e then
    return e
  end
end
tx_notice_deadline(s, now)
e = tx_write(s)
if e then
  return e
end
return tx_view('ok', s, now)
