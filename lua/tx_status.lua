--! use: clock, msgpack, tx
-- tx_status: read the tally and decision; decide ROLLBACK if the deadline has passed.
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] participant to report on ("" none).
-- Reply: the tx view; code "unknown" if neither tally nor decision exists.
-- Atomic because a reader that notices the deadline decides then and there, so no
-- process has to stay alive for the timeout to fire, and the check-and-decide must not
-- race a last vote.
local now = now_ms(ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  return tx_view('unknown', now, ARGV[4])
end
tx_check_deadline(now)
return tx_view('ok', now, ARGV[4])
