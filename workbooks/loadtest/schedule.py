"""The arrival schedule: when each request of a run is meant to start.

The run's stages define a rate r(t) (holds and linear ramps) and so a cumulative count
N(t) = ∫0^t r. Arrival k (k = 0, 1, 2, … over the whole run) is placed where N reaches a target:

- uniform: the target of arrival k is k + 1/2, so arrivals are evenly spaced by the instantaneous
  rate (a 400 req/s hold has one every 2.5 ms) and their number is within one of the integral;
- poisson: the targets are the partial sums of Exp(1) draws from `random.Random(seed)`: a unit-rate
  Poisson process carried through N⁻¹ (time rescaling), i.e. an inhomogeneous Poisson process
  of rate r(t).

N⁻¹ is closed-form per stage (a division for a hold, the stable root of a quadratic for a ramp).
The sequence is the same on every process for the same stages, law and seed; a member keeps the
arrivals with `k % members == member`, so N processes together send exactly what one would.
Everything is generated lazily (O(1) memory); a stage of rate 0 yields nothing and takes no time.
"""

from __future__ import annotations

import math
import random
from typing import Iterable, Iterator

LAWS = ("uniform", "poisson")


def _segments(stages: Iterable) -> list[tuple[float, float, float, float, float]]:
    """(t_start, duration, rate_start, rate_end, count_start) per stage with a positive count.
    Stages are `plan.Stage`s or their run.json form ({"duration", "start", "end"})."""
    out, t, c = [], 0.0, 0.0
    for s in stages:
        if isinstance(s, dict):
            d, a, b = float(s["duration"]), float(s["start"]), float(s["end"])
        else:
            d, a, b = float(s.duration), float(s.start), float(s.end)
        if not (math.isfinite(d) and math.isfinite(a) and math.isfinite(b)) or min(d, a, b) < 0:
            raise ValueError(f"a stage needs finite, non-negative duration and rates: {s!r}")
        if d > 0 and (a > 0 or b > 0):
            out.append((t, d, a, b, c))
            c += (a + b) / 2 * d
        t += d
    return out


def _tau(n: float, d: float, a: float, b: float) -> float:
    """The time τ in [0, d] at which a stage (rate a -> b over d s) has had n arrivals."""
    if a == b:
        tau = n / a
    else:
        disc = a * a + 2.0 * (b - a) * n / d
        tau = 2.0 * n / (a + math.sqrt(disc if disc > 0 else 0.0))
    return tau if tau < d else d


def expected_count(stages: Iterable, law: str = "uniform") -> float:
    """How many arrivals the stages produce: exactly, for uniform (the integral rounded as the
    generator rounds it); the mean (the integral), for Poisson."""
    if law not in LAWS:
        raise ValueError(f"unknown arrival law {law!r}")
    segs = _segments(stages)
    # the same arithmetic as the generators, so the uniform count is exact
    total = segs[-1][4] + (segs[-1][2] + segs[-1][3]) / 2 * segs[-1][1] if segs else 0.0
    if law == "poisson":
        return total
    return max(0, math.ceil(total - 0.5))


def arrivals(stages: Iterable, law: str = "uniform", seed: int = 0, member: int = 0, members: int = 1,
             start_index: int = 0) -> Iterator[tuple[int, float]]:
    """(k, t) for the global arrivals k >= start_index with k % members == member, t in seconds
    after the run's start, in order."""
    if law not in LAWS:
        raise ValueError(f"unknown arrival law {law!r}")
    if members < 1 or not 0 <= member < members:
        raise ValueError(f"member {member} of {members}")
    segs = _segments(stages)
    if law == "uniform":
        return _uniform(segs, member, members, start_index)
    return _poisson(segs, seed, member, members, start_index)


def _uniform(segs, member: int, members: int, start_index: int) -> Iterator[tuple[int, float]]:
    k = max(start_index, 0)
    k += (member - k) % members
    for t_start, d, a, b, c0 in segs:
        c1 = c0 + (a + b) / 2 * d
        hold = a == b
        while k + 0.5 < c1:
            n = k + 0.5 - c0
            if hold:
                tau = n / a
            else:
                disc = a * a + 2.0 * (b - a) * n / d
                tau = 2.0 * n / (a + math.sqrt(disc if disc > 0 else 0.0))
            yield k, t_start + (tau if tau < d else d)
            k += members


def _poisson(segs, seed: int, member: int, members: int, start_index: int) -> Iterator[tuple[int, float]]:
    rng = random.Random(seed)
    expo = rng.expovariate
    k = 0
    e = expo(1.0)
    for t_start, d, a, b, c0 in segs:
        c1 = c0 + (a + b) / 2 * d
        hold = a == b
        while e < c1:
            if k >= start_index and k % members == member:
                n = e - c0
                if hold:
                    tau = n / a
                else:
                    disc = a * a + 2.0 * (b - a) * n / d
                    tau = 2.0 * n / (a + math.sqrt(disc if disc > 0 else 0.0))
                yield k, t_start + (tau if tau < d else d)
            k += 1
            e += expo(1.0)
