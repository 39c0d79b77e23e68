--! use: tx
-- tx_payload: read what `begin` stored for integrations (the Celery callback mode's
-- handler signatures), e.g. to run one participant's handler again.
-- KEYS[1]: the transaction's hash (see lib/tx.lua).
-- ARGV: [1] clock override, [2] channel, [3] txid.
-- Reply: {"ok", outcome, payload}; {"unknown"} or {"corrupt", field, value}.
-- Atomic because the state is validated and read in one step. Writes nothing.
local s, e = tx_load()
if e then
  return e
end
if not s then
  return {'unknown'}
end
return {'ok', s.outcome, s.payload}
