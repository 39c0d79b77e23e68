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
          transition(s, 'open', nil, 'trial_failed', 'a half-open trial failed', head_note())
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

-- The fast path of report(). In the closed state of a breaker with no window, outcomes
-- that trip nothing (every success and failure of a healthy fleet) change only the
-- consecutive count and the totals: those are read and written in place in the stored
-- string (lua/lib/codec.lua), with no table and no ACL question, as nothing is
-- published. It is apply_batch and save for that case and no other: the reply, or nil
-- when the step needs the whole machine (a transition, a window, a permit, settings not
-- ours, another layout, no `struct`), and then nothing has been written.
-- A call that refreshes the TTL (a process's first, then one every ttl/10: see save())
-- takes the whole machine too, so it also asks the ACL whether this user may publish:
-- a user who may not is told at its first call, not at its breaker's first trip.
local function closed_tally(raw)
  if not struct or head_refresh() or cfg.wkind ~= 0 or type(raw) ~= 'string'
    or #raw < HEAD + 4 * #STRS
    or string.byte(raw, 1) ~= LAYOUT or string.byte(raw, 2) ~= ST_CODE.closed
    or string.find(raw, cfg.text_enc, HEAD + 1, true) ~= HEAD + 1 then
    return nil
  end
  local gen, consec, ok, fail, slow, ign, np, wkind, wsize = peek_hot(raw)
  if wkind ~= cfg.wkind or wsize ~= cfg.wsize then return nil end
  -- Anything odd in the batch (check_batch's errors included) is left to the machine.
  local fail_max = cfg.fail_max
  for i = OP, #ARGS, 4 do
    local run_gen, code, m = tonumber(ARGS[i]), ARGS[i + 1], tonumber(ARGS[i + 2])
    if ARGS[i + 3] ~= '' or not run_gen or not m or m < 1 or m ~= math.floor(m) then
      return nil
    end
    local mine = run_gen == gen
    if code == '0' or code == '2' then
      ok = ok + m
      if code == '2' then slow = slow + m end
      if mine then consec = 0 end
    elseif code == '1' or code == '3' then
      fail = fail + m
      if code == '3' then slow = slow + m end
      if mine then
        consec = consec + m
        if fail_max > 0 and consec >= fail_max then return nil end
      end
    elseif code == 'x' then ign = ign + m
    elseif code == 'n' then np = np + m
    else return nil end
  end
  local blob = raw
  if #ARGS >= OP then
    blob = with_hot(raw, gen, consec, ok, fail, slow, ign, np, wkind, wsize)
    redis.call('SET', S, blob, 'KEEPTTL')
  end
  return blob
end

-- What breaker_report does for one breaker (keys S, P, B, R; argv its head and batch):
-- the breaker reply, or the stored state alone when the reply would say nothing more
-- (no wait, no transition, no other settings: redisbreaker/state.py reads either), or
-- an error reply returned before any write. `now` is the call's
-- TIME when the caller read it already (a clock override still wins); otherwise the
-- clock is read only if the step needs it (a transition, a time window, an open state).
local function report(keys, argv, now)
  local setup_error = breaker_setup(keys, argv)
  if setup_error then return setup_error end
  local raw = redis.pcall('GET', S)
  local fast = closed_tally(raw)
  if fast then return fast end
  local bad = check_batch(OP)
  if bad then return redis.error_reply(bad) end
  set_clock(now)
  local s = load(true, raw)
  if s.err then return s end
  if cfg.wkind == 2 then tw_advance(s, math.floor(clock() / 1000)) end
  apply_batch(s, OP)
  save(s)
  local wait_ms = remain(s)
  -- Nothing to say but the state: the state alone (Redis converts an array's elements
  -- one by one; for a recorded outcome that costs more than reading the state).
  if wait_ms == 0 and transition_from == '' and s.other == '' then return s.blob end
  return reply(s, '', wait_ms)
end
