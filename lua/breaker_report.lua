--! use: outcomes
-- breaker_report: record a process's outcomes, in the order they completed. Also the
-- explicit sync(): it reads the state and never takes a half-open permit.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..OP-1] the head; [OP..] the batch, runs of four (see lua/lib/outcomes.lua);
--   an empty batch only reads the state
-- Reply: the breaker reply, wait_ms = time left open, verdict ''.
-- Atomic because: counting, the trip decision and the transition must happen as one
-- step, so concurrent failures never lose an update and only one of them trips.
return report(KEYS, ARGV)
