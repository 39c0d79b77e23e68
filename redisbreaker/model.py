"""The breaker's state machine in pure Python: the reference for ``lua/lib/breaker.lua``.

It reads the same ARGV list the scripts read and returns the same reply, so the test
suite can drive it and the Lua scripts with one random sequence and compare them
after every step. It is also the in-process breaker of the ``local`` outage policy.
Keep it line-for-line with the Lua; that is what makes the comparison meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redisbreaker.state import Reason, State, Totals, Verdict, View

# One reported outcome run: (generation it was admitted in, outcome code, count, token).
Entry = tuple[int, str, int, str]


def _is_fail(c: str) -> bool:
    return c in ("1", "3")


def _is_slow(c: str) -> bool:
    return c in ("2", "3")


def _num(x: float) -> str:
    """A number as Lua's ``tostring`` writes it (``%.14g``)."""
    return f"{x:.14g}"


@dataclass
class _Cfg:
    fail_max: int
    wkind: int
    wsize: int
    min_calls: int
    rate_bp: int
    slow_bp: int
    reset_ms: int
    mult: float
    max_ms: int
    jitter: float
    rand: float
    permits: int
    lease_ms: int
    succ: int
    settings: str  # the settings text (ARGV[6]), as the scripts store it
    who: str
    note: str

    @classmethod
    def parse(cls, argv: Sequence[Any]) -> _Cfg:
        """Read the call's head (ARGV[1..8]) as ``lua/lib/breaker.lua`` does; the
        settings come as their text (ARGV[6])."""
        a = [x.decode("latin-1") if isinstance(x, bytes) else str(x) for x in argv[:8]]
        s = a[5].split(",")
        return cls(
            rand=float(a[1]), fail_max=int(s[0]), wkind=int(s[1]), wsize=int(s[2]),
            min_calls=int(s[3]), rate_bp=int(s[4]), slow_bp=int(s[5]), reset_ms=int(s[6]),
            mult=float(s[7]), max_ms=int(s[8]), jitter=float(s[9]), permits=int(s[10]),
            lease_ms=int(s[11]), succ=int(s[12]), settings=a[5],
            who=a[6] if len(a) > 6 else "", note=a[7] if len(a) > 7 else "",
        )  # fmt: skip

    @property
    def wk(self) -> str:
        return f"{self.wkind}:{self.wsize}:2"


@dataclass
class BreakerModel:
    """One breaker's shared state, held in memory instead of Redis."""

    st: State = State.CLOSED
    gen: int = 0
    until: int = 0
    trips: int = 0
    consec: int = 0
    hs: int = 0
    n: int = 0
    wf: int = 0
    ws: int = 0
    h: int = 0
    wsec: int = 0
    ct: int = 0
    cf: int = 0
    cs: int = 0
    wk: str | None = None
    cfg: str | None = None  # the settings of the last writer
    # Key R: one byte per count-window slot, b"0".."3"; a slot past the end is empty.
    ring: bytearray = field(default_factory=bytearray)
    # Key B: second -> running totals (calls, failures, slow) at the end of that second,
    # in ascending order of second (a bucket is only ever added at the newest second).
    buckets: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    permits: dict[str, int] = field(default_factory=dict)
    events: list[tuple[State, State, int, int]] = field(default_factory=list)
    # The fleet totals and the reason of the last transition (see lua/lib/breaker.lua).
    n_ok: int = 0
    n_fail: int = 0
    n_slow: int = 0
    n_ign: int = 0
    n_np: int = 0
    n_trips: int = 0
    open_ms: int = 0
    opened: int | None = None
    reason: Reason = field(default_factory=Reason)

    # -- operations (one per script) ------------------------------------------------

    def admit(self, argv: Sequence[Any], now: int, token: str, batch: Sequence[Entry] = ()) -> View:
        c = self._load(argv)
        if c.wkind == 2:
            self._tw_advance(c, now // 1000)
        self._apply_batch(c, batch, now)
        verdict, wait = Verdict.ALLOW, 0
        if self.st is State.OPEN:
            if now < self.until:
                verdict, wait = Verdict.REJECT, self.until - now
            else:
                self._transition(c, State.HALF_OPEN, now)
        if self.st is State.HALF_OPEN:
            self.permits = {t: e for t, e in self.permits.items() if e > now}
            if len(self.permits) < c.permits:
                self.permits[token] = now + c.lease_ms
                verdict = Verdict.TRIAL
            else:
                first = min(self.permits.items(), key=lambda kv: (kv[1], kv[0]))
                verdict, wait = Verdict.REJECT, first[1] - now
        elif self.st is State.FORCED_OPEN:
            verdict = Verdict.REJECT
        return self._reply(verdict, wait)

    def report(self, argv: Sequence[Any], now: int, batch: Sequence[Entry]) -> View:
        c = self._load(argv)
        if c.wkind == 2:
            self._tw_advance(c, now // 1000)
        self._apply_batch(c, batch, now)
        return self._reply(Verdict.NONE, self._remain(now))

    def operate(self, argv: Sequence[Any], now: int, cmd: str, open_for: int = 0) -> View:
        if cmd not in ("force_open", "disable", "reset", "open"):
            raise ValueError(f"unknown breaker command {cmd!r}")
        c = self._load(argv)
        text = cmd + (f" for {_num(open_for / 1000)}s" if cmd == "open" else "") + f" by {c.who}"
        if c.note:
            text += f": {c.note}"
        if cmd == "force_open":
            if self.st is not State.FORCED_OPEN:
                self._transition(c, State.FORCED_OPEN, now, None, "operator", text)
        elif cmd == "disable":
            if self.st is not State.DISABLED:
                self._transition(c, State.DISABLED, now, None, "operator", text)
        elif cmd == "reset":
            if self.st is not State.CLOSED:
                self._transition(c, State.CLOSED, now, None, "operator", text)
            else:
                self._win_reset(c)
                self.consec = 0
            self.trips = 0
        else:
            self._transition(c, State.OPEN, now, open_for, "operator", text)
        if not self._why:
            self._audit(c, "operator", text, "", now)
        return self._reply(Verdict.NONE, self._remain(now))

    def snapshot(self, argv: Sequence[Any], now: int) -> View:
        c = self._load(argv, store_settings=False)
        if c.wkind == 2:
            self._tw_advance(c, now // 1000)
        view = self._reply(Verdict.NONE, self._remain(now))
        open_total = self.open_ms
        if self.st in (State.OPEN, State.FORCED_OPEN):
            open_total += max(0, now - (self.opened if self.opened is not None else now))
        return replace(view, totals=replace(view.totals, open_ms=open_total), reason=self.reason)

    # -- the machine ----------------------------------------------------------------

    def _load(self, argv: Sequence[Any], *, store_settings: bool = True) -> _Cfg:
        self._from = None
        self._why = ""
        c = _Cfg.parse(argv)
        self._other = self.cfg if self.cfg is not None and self.cfg != c.settings else ""
        if store_settings:
            self.cfg = c.settings
        if self.wk != c.wk:
            self._win_reset(c)
            self.wk = c.wk
        return c

    def _win_reset(self, c: _Cfg) -> None:
        self.n = self.wf = self.ws = self.h = self.wsec = self.ct = self.cf = self.cs = 0
        self.ring = bytearray()
        self.buckets = {}

    def _tw_clear(self) -> None:
        self.n = self.wf = self.ws = self.ct = self.cf = self.cs = 0
        self.buckets = {}

    def _tw_advance(self, c: _Cfg, sec: int) -> None:
        if sec <= self.wsec:
            return
        if self.n > 0:
            if sec - self.wsec >= c.wsize:
                self._tw_clear()
            else:
                cut = sec - c.wsize
                last: tuple[int, int, int] | None = None
                while self.buckets:
                    oldest = next(iter(self.buckets))
                    if oldest > cut:
                        break
                    last = self.buckets.pop(oldest)
                if last is not None:
                    t, f, w = last
                    self.n, self.wf, self.ws = self.ct - t, self.cf - f, self.cs - w
                    if self.n == 0:
                        self._tw_clear()
        self.wsec = sec

    def _getrange(self, start: int, end: int) -> bytes:
        return bytes(self.ring[start : end + 1])

    def _setrange(self, offset: int, data: bytes) -> None:
        if len(self.ring) < offset:
            self.ring.extend(b"\0" * (offset - len(self.ring)))
        self.ring[offset : offset + len(data)] = data

    def _cw_push(self, c: _Cfg, code: str, m: int) -> None:
        size = c.wsize
        f, w = int(_is_fail(code)), int(_is_slow(code))
        b = code.encode()
        if m >= size:
            self.ring = bytearray(b * size)
            self.h, self.n, self.wf, self.ws = 0, size, f * size, w * size
            return
        first = min(m, size - self.h)
        evicted = self._getrange(self.h, self.h + first - 1)
        if m > first:
            evicted += self._getrange(0, m - first - 1)
        self.n += m - sum(evicted.count(x) for x in (b"0", b"1", b"2", b"3"))
        self.wf += f * m - sum(evicted.count(x) for x in (b"1", b"3"))
        self.ws += w * m - sum(evicted.count(x) for x in (b"2", b"3"))
        self._setrange(self.h, b * first)
        if m > first:
            self._setrange(0, b * (m - first))
        self.h = (self.h + m) % size

    def _tw_push(self, c: _Cfg, code: str, m: int, now: int) -> None:
        self._tw_advance(c, now // 1000)
        self.n += m
        self.ct += m
        if _is_fail(code):
            self.wf += m
            self.cf += m
        if _is_slow(code):
            self.ws += m
            self.cs += m
        self.buckets[self.wsec] = (self.ct, self.cf, self.cs)

    def _should_trip(self, c: _Cfg) -> tuple[str, str] | None:
        if c.fail_max > 0 and self.consec >= c.fail_max:
            plural = "" if self.consec == 1 else "s"
            return (
                "consecutive",
                f"{self.consec} consecutive failure{plural} (fail_max {c.fail_max})",
            )
        if c.wkind > 0 and self.n > 0 and self.n >= c.min_calls:
            if c.rate_bp > 0 and self.wf * 10000 >= c.rate_bp * self.n:
                return "failure_rate", (
                    f"failure rate {self.wf * 100 // self.n}% of {self.n} calls "
                    f"(threshold {_num(c.rate_bp / 100)}%)"
                )
            if c.slow_bp > 0 and self.ws * 10000 >= c.slow_bp * self.n:
                return "slow_call_rate", (
                    f"slow-call rate {self.ws * 100 // self.n}% of {self.n} calls "
                    f"(threshold {_num(c.slow_bp / 100)}%)"
                )
        return None

    @staticmethod
    def _open_ms(c: _Cfg, trips: int) -> int:
        d = c.reset_ms * (c.mult ** (trips - 1))
        d = min(d, c.max_ms)
        return math.floor(d * (1 + c.jitter * c.rand))

    def _remain(self, now: int) -> int:
        return self.until - now if self.st is State.OPEN and self.until > now else 0

    def _audit(self, c: _Cfg, why: str, text: str, err: str, now: int) -> None:
        self._why = text
        self.reason = Reason(why, text, err, c.who, now)

    def _transition(
        self, c: _Cfg, new: State, now: int, open_for: int | None = None,
        why: str | None = None, text: str = "", err: str = "",
    ) -> None:  # fmt: skip
        self._from = self.st
        if self.st in (State.OPEN, State.FORCED_OPEN):
            self.open_ms += max(0, now - (self.opened if self.opened is not None else now))
        if new is State.OPEN and open_for is None:
            self.n_trips += 1
        if new in (State.OPEN, State.FORCED_OPEN):
            self.opened = now
        if why is not None:
            self._audit(c, why, text, err, now)
        self.st = new
        self.gen += 1
        self.consec = self.hs = 0
        self.until = 0
        if new is State.OPEN:
            if open_for is None:
                self.trips += 1
                open_for = self._open_ms(c, self.trips)
            self.until = now + open_for
        elif new is not State.HALF_OPEN:
            self.trips = 0
        if new is not State.HALF_OPEN:
            self._win_reset(c)
        self.permits = {}
        self.events.append((self._from, new, self.gen, self._remain(now)))

    def _record_closed(self, c: _Cfg, code: str, m: int, now: int) -> None:
        if m <= 0 or self.st is not State.CLOSED:
            return
        self.consec = self.consec + m if _is_fail(code) else 0
        if c.wkind == 1:
            self._cw_push(c, code, m)
        elif c.wkind == 2:
            self._tw_push(c, code, m, now)
        rule = self._should_trip(c)
        if rule is not None:
            self._transition(c, State.OPEN, now, None, rule[0], rule[1], c.note)

    def _apply_batch(self, c: _Cfg, batch: Sequence[Entry], now: int) -> None:
        """``apply_batch`` of ``lua/lib/outcomes.lua``."""
        for gen, code, m, token in batch:
            if token:
                self.permits.pop(token, None)
            self._count_totals(code, m)
            if gen == self.gen and code not in ("x", "n"):
                if self.st is State.CLOSED:
                    self._record_closed(c, code, m, now)
                elif self.st is State.HALF_OPEN and token:
                    if _is_fail(code):
                        self._transition(c, State.OPEN, now, None, "trial_failed",
                                         "a half-open trial failed", c.note)  # fmt: skip
                    else:
                        self.hs += 1
                        if self.hs >= c.succ:
                            self._transition(c, State.CLOSED, now, None, "recovered",
                                             f"{self.hs} half-open trial(s) succeeded")  # fmt: skip

    def _count_totals(self, code: str, m: int) -> None:
        """``count_totals`` of ``lua/lib/outcomes.lua``."""
        if code == "x":
            self.n_ign += m
        elif code == "n":
            self.n_np += m
        else:
            if _is_fail(code):
                self.n_fail += m
            else:
                self.n_ok += m
            if _is_slow(code):
                self.n_slow += m

    def _reply(self, verdict: Verdict, wait: int) -> View:
        return View(
            state=self.st, generation=self.gen, wait_ms=wait, consecutive_failures=self.consec,
            calls=self.n, failures=self.wf, slow_calls=self.ws, half_open_successes=self.hs,
            trips=self.trips, transitioned_from=self._from, verdict=verdict,
            other_settings=self._other, transition_reason=self._why,
            totals=Totals(self.n_ok, self.n_fail, self.n_slow, self.n_ign, self.n_np,
                          self.n_trips, self.open_ms),
        )  # fmt: skip

    _from: State | None = None
    _other: str = ""
    _why: str = ""
