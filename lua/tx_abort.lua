--! use: clock, msgpack, tx
-- tx_abort: decide ROLLBACK from outside the votes (e.g. the launcher failed to send).
-- KEYS: see lib/tx.lua (meta, votes, members, decision, claim, dispatched).
-- ARGV: [1] clock override, [2] channel, [3] txid, [4] reason.
-- Reply: the tx view (the earlier decision if there was one); code "unknown".
-- Atomic because the abort must not overwrite a decision made a moment earlier.
local now = now_ms(ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return tx_view('unknown', now, '')
  end
  if not tx_check_deadline(now) then
    tx_decide('rollback', 'abort', '', ARGV[4], now)
  end
end
return tx_view('ok', now, '')
