--! use: clock, msgpack, breaker
-- breaker_admit: may a call run now? Also flushes the caller's locally counted
-- successes and refreshes its cached view (the periodic sync of the hot path).
-- KEYS: S, P, B (see lua/lib/breaker.lua)
-- ARGV: [1..18] config; [OP] permit token; [OP+1] pending successes; [OP+2] their generation
-- Reply: the breaker reply; verdict 'allow' (closed or disabled), 'trial' (a half-open
--   permit was leased to the token), or 'reject' (wait_ms until a call could pass).
-- Atomic because: the open -> half-open move and the permit count must be decided by
-- one caller at a time, or several processes would each run "the" trial call.
local now = now_ms(cfg.clock)
local s = load()
if s.err then return s end
if cfg.wkind == 2 then tw_advance(s, math.floor(now / 1000)) end
apply_pending(s, tonumber(ARGV[OP + 1]), tonumber(ARGV[OP + 2]), now)

local verdict, wait_ms = 'allow', 0
if s.st == 'open' then
  if now < s['until'] then
    verdict, wait_ms = 'reject', s['until'] - now
  else
    transition(s, 'half_open', now)
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
save(s, now)
return reply(s, verdict, wait_ms)
