--! use: breaker
-- Outcomes a process reports, applied in the order they completed. Used by
-- breaker_report, breaker_flush and breaker_admit.
--
-- A batch is ARGV[first..], in runs of four: the generation the calls were admitted in,
-- the outcome code ('0' success, '1' failure, '2' slow success, '3' slow failure,
-- 'x' ignored, 'n' refused while open: counted only), how many calls, and the
-- half-open permit token ('' unless a trial).
-- A process queues its outcomes and sends them one batch at a time, so the shared
-- consecutive count sees them in the order they really completed, across threads.
-- redisbreaker/model.py `_apply_batch` is the same in Python.

local CODES = { ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, x = 1, n = 1 }

-- nil if the batch is well formed, else the error text. Called before any write.
local function check_batch(first)
  if (#ARGS - first + 1) % 4 ~= 0 then
    return 'ERR breaker batch: ' .. (#ARGS - first + 1) .. ' arguments, not runs of 4'
  end
  for i = first, #ARGS, 4 do
    local gen, m = tonumber(ARGS[i]), tonumber(ARGS[i + 2])
    if not gen or not m or m < 1 or m ~= math.floor(m) or not CODES[ARGS[i + 1]] then
      return 'ERR breaker batch: bad run ' .. ARGS[i] .. ' ' .. ARGS[i + 1] .. ' ' .. ARGS[i + 2]
    end
  end
  return nil
end

-- Add m outcomes of code c to the fleet totals (whatever their generation).
local function count_totals(s, c, m)
  if c == 'x' then s.n_ign = s.n_ign + m
  elseif c == 'n' then s.n_np = s.n_np + m
  else
    if is_fail(c) then s.n_fail = s.n_fail + m else s.n_ok = s.n_ok + m end
    if is_slow(c) then s.n_slow = s.n_slow + m end
  end
end

-- An outcome of an older generation is dropped (its state is gone), but its permit
-- is still handed back; every outcome counts in the totals.
local function apply_batch(s, first)
  for i = first, #ARGS, 4 do
    local gen, code, m, token = tonumber(ARGS[i]), ARGS[i + 1], tonumber(ARGS[i + 2]), ARGS[i + 3]
    if token ~= '' then redis.call('ZREM', P, token) end
    count_totals(s, code, m)
    if gen == s.gen and code ~= 'x' and code ~= 'n' then
      if s.st == 'closed' then
        record_closed(s, code, m)
      elseif s.st == 'half_open' and token ~= '' then
        if is_fail(code) then
          transition(s, 'open', nil, 'trial_failed', 'a half-open trial failed', cfg.note)
        else
          s.hs = s.hs + 1
          if s.hs >= cfg.succ then
            transition(s, 'closed', nil, 'recovered', s.hs .. ' half-open trial(s) succeeded')
          end
        end
      end
    end
  end
end

-- What breaker_report does for one breaker (keys S, P, B, R; argv its head and batch):
-- the breaker reply, or an error reply returned before any write. `now` is the call's
-- TIME when the caller read it already (a clock override still wins); otherwise the
-- clock is read only if the step needs it (a transition, a time window, an open state).
local function report(keys, argv, now)
  local setup_error = breaker_setup(keys, argv)
  if setup_error then return setup_error end
  local bad = check_batch(OP)
  if bad then return redis.error_reply(bad) end
  set_clock(now)
  local s = load(true)
  if s.err then return s end
  if cfg.wkind == 2 then tw_advance(s, math.floor(clock() / 1000)) end
  apply_batch(s, OP)
  save(s)
  return reply(s, '', remain(s))
end
