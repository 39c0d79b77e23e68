--! use: clock, msgpack, breaker
-- breaker_record: record the outcome of one call (and the caller's pending successes).
-- KEYS: S, P, B (see lua/lib/breaker.lua)
-- ARGV: [1..18] config; [OP] permit token ('' unless a half-open trial);
--   [OP+1] pending successes; [OP+2] their generation; [OP+3] generation the call
--   was admitted in; [OP+4] outcome code ('0' '1' '2' '3' 'x')
-- Reply: the breaker reply, verdict ''.
-- Atomic because: counting, the trip decision and the transition must happen as one
-- step, so concurrent failures never lose an update and only one of them trips.
-- An outcome from an older generation is dropped: it belongs to a state that is gone.
local now = now_ms(cfg.clock)
local s = load()
if s.err then return s end
if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
apply_pending(s, tonumber(ARGV[OP + 1]), tonumber(ARGV[OP + 2]), now)

local token, gen, code = ARGV[OP], tonumber(ARGV[OP + 3]), ARGV[OP + 4]
if token ~= '' then redis.call('ZREM', P, token) end
if gen == s.gen and code ~= 'x' then
  if s.st == 'closed' then
    record_closed(s, code, 1, now)
  elseif s.st == 'half_open' and token ~= '' then
    if is_fail(code) then
      transition(s, 'open', now)
    else
      s.hs = s.hs + 1
      if s.hs >= cfg.succ then transition(s, 'closed', now) end
    end
  end
end
save(s, now)
return reply(s, '', 0)
