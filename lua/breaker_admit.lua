--! use: outcomes
-- breaker_admit: may a call run now? Also reports the caller's queued outcomes and
-- refreshes its cached view (the periodic sync of the hot path).
-- KEYS: S, P, B, R (see lua/lib/breaker.lua)
-- ARGV: [1..OP-1] the head (lua/lib/breaker.lua); [OP] permit token; [OP+1..] the caller's outcome batch
--   (runs of four, see lua/lib/outcomes.lua; may be empty)
-- Reply: the breaker reply; verdict 'allow' (closed or disabled), 'trial' (a half-open
--   permit was leased to the token), or 'reject' (wait_ms until a call could pass).
-- Atomic because: the open -> half-open move and the permit count must be decided by
-- one caller at a time, or several processes would each run "the" trial call.
local setup_error = breaker_setup(KEYS, ARGV)
if setup_error then return setup_error end
local bad = check_batch(OP + 1)
if bad then return redis.error_reply(bad) end
local now = clock()
local s = load(true)
if s.err then return s end
if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
apply_batch(s, OP + 1)

local verdict, wait_ms = 'allow', 0
if s.st == 'open' then
  if now < s['until'] then
    verdict, wait_ms = 'reject', s['until'] - now
  else
    transition(s, 'half_open')
  end
end
if s.st == 'half_open' then
  redis.call('ZREMRANGEBYSCORE', P, '-inf', now)
  if redis.call('ZCARD', P) < cfg.permits then
    redis.call('ZADD', P, now + cfg.lease_ms, ARGV[OP])
    verdict = 'trial'
  else
    local first = redis.call('ZRANGE', P, 0, 0, 'WITHSCORES')
    verdict, wait_ms = 'reject', tonumber(first[2]) - now
  end
elseif s.st == 'forced_open' then
  verdict = 'reject'
end
save(s)
return reply(s, verdict, wait_ms)
