--! use: breaker
-- gate_claim: may this paused worker consume again? Called by the Celery consumption
-- gate (redisbreaker/celery/gate.py) when it polls, when a transition of the breaker
-- is seen on pub/sub, and when a pause deadline passes.
-- KEYS: S, P, B, R (see lua/lib/breaker.lua), then last L, the gate's trial lease (a
--   string "<worker id>|<generation of the open period it was taken in>", same hash tag).
-- ARGV: [1..OP-1] the head; [OP] worker id; [OP+1] lease ms; [OP+2] mode: 'trial' (a task
--   breaker: one worker resumes for the half-open trial) or 'manual' (a manual pause:
--   everyone resumes at the deadline).
-- Reply: {action, generation, ms, now}: action 'resume' (closed or disabled: consume),
--   'trial' (this worker holds the lease: consume, ms = lease left), or 'wait'
--   (stay paused; ms = time until the deadline or the lease ends, 0 = no deadline);
--   now is the server's clock (ms), which the gate's heartbeat reports times in.
-- Atomic because: the lease must be taken by exactly one worker of the scope, and
-- only once the open period the gate saw has really ended by the server's clock.
-- Writes nothing but L: the breaker's state is not saved (the trial task's own admit
-- call moves it to half-open, so the breaker's permit accounting stays the one source
-- of truth). Like every breaker script, loading clears a window stored for other
-- window settings (lua/lib/breaker.lua `load`).
local setup_error = breaker_setup(KEYS, ARGV)
if setup_error then return setup_error end
local now = clock()
local s = load()
if s.err then return s end
-- Last, after however many keys the breaker has, so the two lists cannot drift apart.
local L = KEYS[#KEYS]
local me, lease_ms, mode = ARGV[OP], tonumber(ARGV[OP + 1]), ARGV[OP + 2]

if s.st == 'closed' or s.st == 'disabled' then return { 'resume', s.gen, 0, now } end
if s.st == 'forced_open' then return { 'wait', s.gen, 0, now } end
if s.st == 'open' and now < s['until'] then return { 'wait', s.gen, s['until'] - now, now } end
if mode == 'manual' then return { 'resume', s.gen, 0, now } end

-- Due (open past its deadline) or half-open: the open period began at this generation.
local period = (s.st == 'open') and s.gen or (s.gen - 1)
local held = redis.call('GET', L)
if held then
  local sep = string.find(held, '|', 1, true)
  local who, gen = '', -1
  if sep then who, gen = string.sub(held, 1, sep - 1), tonumber(string.sub(held, sep + 1)) or -1 end
  if gen >= period and who ~= me then
    return { 'wait', s.gen, redis.call('PTTL', L), now }
  end
end
redis.call('SET', L, me .. '|' .. period, 'PX', lease_ms)
return { 'trial', s.gen, lease_ms, now }
