"""The generator checks itself: are these numbers the server's, or the generator's own?

A generator process that is late starting its arrivals (scheduler `lag` p99 above 5 ms) or that
uses more than 85 % of a core cannot keep the schedule, and the latency it reports then measures
itself. The `Judge` watches every member once a second and flags the run when one member exceeds
either limit for `window_s` consecutive seconds (consecutive second numbers: a second the member
did not report breaks the streak). Once flagged, a run stays flagged; the verdict names the member,
the limit, when the streak began and the worst figures seen.
"""

from __future__ import annotations

import math


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


class _Member:
    __slots__ = ("last", "streak", "streak_start", "lag_streak", "cpu_streak", "worst_lag", "worst_cpu", "seen")

    def __init__(self):
        self.last: int | None = None
        self.streak = 0
        self.streak_start: int | None = None
        self.lag_streak = 0  # seconds of the current streak over the lag limit
        self.cpu_streak = 0  # … over the CPU limit
        self.worst_lag: float | None = None
        self.worst_cpu: float | None = None
        self.seen: set[int] = set()


class Judge:
    """`observe(member, second, lag_p99_ms, cpu_frac)` once a second per member; `saturated`;
    `verdict()`."""

    def __init__(self, lag_p99_ms: float = 5.0, cpu: float = 0.85, window_s: int = 5):
        self.lag_limit = float(lag_p99_ms)
        self.cpu_limit = float(cpu)
        self.window_s = max(int(window_s), 1)
        self._members: dict[str, _Member] = {}
        self._flag: dict | None = None

    def observe(self, member, second: int, lag_p99_ms: float | None, cpu_frac: float | None) -> None:
        """One member's figures for one second. None (no arrival that second, no CPU reading) is not
        over a limit. A repeated or older second is ignored."""
        name = str(member)
        m = self._members.get(name)
        if m is None:
            m = self._members[name] = _Member()
        if isinstance(second, bool) or not isinstance(second, int):
            return
        if second in m.seen or (m.last is not None and second < m.last):
            return
        m.seen.add(second)
        lag, cpu = _num(lag_p99_ms), _num(cpu_frac)
        if lag is not None and (m.worst_lag is None or lag > m.worst_lag):
            m.worst_lag = lag
        if cpu is not None and (m.worst_cpu is None or cpu > m.worst_cpu):
            m.worst_cpu = cpu
        over_lag = lag is not None and lag > self.lag_limit
        over_cpu = cpu is not None and cpu > self.cpu_limit
        if (over_lag or over_cpu) and m.last is not None and second == m.last + 1 and m.streak:
            m.streak += 1
        elif over_lag or over_cpu:
            m.streak, m.streak_start, m.lag_streak, m.cpu_streak = 1, second, 0, 0
        else:
            m.streak, m.streak_start, m.lag_streak, m.cpu_streak = 0, None, 0, 0
        m.lag_streak += 1 if over_lag else 0
        m.cpu_streak += 1 if over_cpu else 0
        m.last = second
        if self._flag is None and m.streak >= self.window_s:
            self._flag = {"member": name, "since": m.streak_start, "at": second,
                          "lag": m.lag_streak > 0, "cpu": m.cpu_streak > 0}

    @property
    def saturated(self) -> bool:
        return self._flag is not None

    def verdict(self) -> dict:
        """{"generator_bound", "reason", "since", "member", "worst_lag_p99_ms", "worst_cpu", "limits",
        "members"}: worst figures over every member (and per member); `since` is the first second of
        the streak that flagged the run."""
        lags = [m.worst_lag for m in self._members.values() if m.worst_lag is not None]
        cpus = [m.worst_cpu for m in self._members.values() if m.worst_cpu is not None]
        out = {
            "generator_bound": self._flag is not None,
            "reason": None,
            "since": None,
            "member": None,
            "worst_lag_p99_ms": round(max(lags), 3) if lags else None,
            "worst_cpu": round(max(cpus), 4) if cpus else None,
            "limits": {"lag_p99_ms": self.lag_limit, "cpu": self.cpu_limit, "window_s": self.window_s},
            "members": {name: {"worst_lag_p99_ms": None if m.worst_lag is None else round(m.worst_lag, 3),
                               "worst_cpu": None if m.worst_cpu is None else round(m.worst_cpu, 4),
                               "seconds": len(m.seen)}
                        for name, m in sorted(self._members.items())},
        }
        f = self._flag
        if f is not None:
            m = self._members[f["member"]]
            why = []
            if f["lag"]:
                why.append(f"scheduler lag p99 above {self.lag_limit:g} ms (worst {m.worst_lag:.1f} ms)")
            if f["cpu"]:
                why.append(f"CPU above {self.cpu_limit:.0%} of a core (worst {m.worst_cpu:.0%})")
            out.update(since=f["since"], member=f["member"],
                       reason=(f"generator {f['member']}: " + " and ".join(why)
                               + f" for {self.window_s} s from t={f['since']} s; the figures are the"
                                 " generator's, not the server's (add --procs or lower the rate)"))
        return out
