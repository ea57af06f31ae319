"""`wbx loadtest` arrival schedules: uniform and Poisson over holds and ramps, the same global sequence
on every process (members partition it exactly), lazily and fast."""

from __future__ import annotations

import itertools
import math
import time

import pytest

from workbooks.loadtest import schedule as S
from workbooks.loadtest.plan import Stage, parse_stages

PLANS = [
    "10s:400",
    "5s:0-400,30s:400,10s:400-0",
    "3s:1000-10,2s:0,4s:0-0,1s:7",
    "0.5s:3,0.5s:3,0.5s:3",
    "2s:0.3",
]


def _integral(stages) -> float:
    return sum((s.start + s.end) / 2 * s.duration for s in stages)


def _count_between(arr, a: float, b: float) -> int:
    return sum(1 for _k, t in arr if a <= t < b)


@pytest.mark.parametrize("spec", PLANS)
def test_uniform_count_is_within_one_of_the_integral_everywhere(spec):
    stages = parse_stages(spec)
    arr = list(S.arrivals(stages, "uniform", seed=0))
    assert abs(len(arr) - _integral(stages)) <= 1
    assert len(arr) == S.expected_count(stages, "uniform")
    assert [k for k, _ in arr] == list(range(len(arr)))
    ts = [t for _, t in arr]
    assert ts == sorted(ts) and (not ts or (ts[0] >= 0 and ts[-1] <= sum(s.duration for s in stages)))
    # every prefix of the run: the count so far is within one of the integral so far
    total = sum(s.duration for s in stages)
    for cut in [total * i / 17 for i in range(1, 18)]:
        want = _integral(_clip(stages, cut))
        assert abs(_count_between(arr, 0, cut) - want) <= 1, (cut, want)


def _clip(stages, cut: float):
    out, at = [], 0.0
    for s in stages:
        if at >= cut:
            break
        d = min(s.duration, cut - at)
        end = s.start + (s.end - s.start) * d / s.duration
        out.append(Stage(d, s.start, end))
        at += s.duration
    return out


def test_uniform_hold_is_evenly_spaced_and_a_ramp_speeds_up():
    arr = list(S.arrivals([Stage(1, 400, 400)], "uniform", 0))
    gaps = {round(b - a, 9) for (_, a), (_, b) in itertools.pairwise(arr)}
    assert gaps == {0.0025}
    ramp = [t for _, t in S.arrivals([Stage(10, 0, 100)], "uniform", 0)]
    # N(t) = 5 t^2, so arrival k is at sqrt((k + 1/2) / 5): closed form, no drift
    assert ramp[0] == pytest.approx(math.sqrt(0.5 / 5))
    assert ramp[-1] == pytest.approx(math.sqrt((len(ramp) - 0.5) / 5))
    assert ramp[1] - ramp[0] > ramp[-1] - ramp[-2]


@pytest.mark.parametrize("spec", PLANS[:3])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poisson_count_is_within_four_sigma(spec, seed):
    stages = parse_stages(spec)
    mean = _integral(stages)
    n = sum(1 for _ in S.arrivals(stages, "poisson", seed))
    assert abs(n - mean) <= 4 * math.sqrt(mean), (n, mean)
    assert S.expected_count(stages, "poisson") == pytest.approx(mean)


def test_poisson_follows_a_ramp_and_is_seeded():
    stages = [Stage(20, 0, 2000)]
    arr = list(S.arrivals(stages, "poisson", 42))
    assert arr == list(S.arrivals(stages, "poisson", 42))
    assert arr != list(S.arrivals(stages, "poisson", 43))
    # the second half of a 0 -> 2000 ramp holds 3/4 of its arrivals
    late = _count_between(arr, 10, 20)
    assert abs(late / len(arr) - 0.75) < 0.01
    # gaps in a hold are exponential: their coefficient of variation is ~1 (uniform's is 0)
    hold = [t for _, t in S.arrivals([Stage(20, 1000, 1000)], "poisson", 7)]
    gaps = [b - a for a, b in itertools.pairwise(hold)]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert mean == pytest.approx(0.001, rel=0.02) and sd / mean == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("law", S.LAWS)
@pytest.mark.parametrize("members", [1, 2, 3, 4, 7])
def test_members_partition_the_global_sequence_exactly(law, members):
    stages = parse_stages("2s:0-300,3s:300,1s:300-50")
    whole = list(S.arrivals(stages, law, seed=9))
    parts = [list(S.arrivals(stages, law, seed=9, member=m, members=members)) for m in range(members)]
    for m, part in enumerate(parts):
        assert all(k % members == m for k, _ in part)
    assert sorted(itertools.chain(*parts)) == whole


@pytest.mark.parametrize("law", S.LAWS)
def test_start_index_resumes_the_same_sequence(law):
    stages = parse_stages("3s:100-500")
    whole = list(S.arrivals(stages, law, seed=4, member=1, members=3))
    resumed = list(S.arrivals(stages, law, seed=4, member=1, members=3, start_index=301))
    assert resumed == [(k, t) for k, t in whole if k >= 301] and resumed


@pytest.mark.parametrize("law", S.LAWS)
def test_rate_zero_stages_produce_nothing_and_do_not_hang(law):
    t = time.process_time()
    assert list(S.arrivals([Stage(10**6, 0, 0)], law, 1)) == []
    arr = list(S.arrivals([Stage(3600, 0, 0), Stage(1, 10, 10), Stage(3600, 0, 0)], law, 1))
    assert all(3600 <= t < 3601 for _, t in arr) and (law == "poisson" or len(arr) == 10)
    assert list(S.arrivals([], law, 1)) == []
    assert time.process_time() - t < 0.5


@pytest.mark.parametrize("law", S.LAWS)
def test_a_minute_at_ten_thousand_per_second_generates_in_under_a_second(law):
    # measured ~0.1 s (uniform) and ~0.2 s (Poisson) of CPU for the 600,000 arrivals here
    stages = [Stage(60, 10_000, 10_000)]
    t = time.process_time()
    n = sum(1 for _ in S.arrivals(stages, law, seed=3))
    assert time.process_time() - t < 1.0
    assert abs(n - 600_000) <= (1 if law == "uniform" else 4 * math.sqrt(600_000))


def test_lazy_memory():
    it = S.arrivals([Stage(7 * 24 * 3600, 1e6, 1e6)], "poisson", 1)  # 6e11 arrivals: must not be built
    first = list(itertools.islice(it, 5))
    assert [k for k, _ in first] == [0, 1, 2, 3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError):
        S.arrivals([Stage(1, 1, 1)], "bursty", 0)
    with pytest.raises(ValueError):
        S.arrivals([Stage(1, 1, 1)], "uniform", 0, member=3, members=3)


def test_stages_in_their_run_json_form_give_the_same_arrivals():
    stages = parse_stages("2s:0-50,1s:50")
    as_json = [s.to_dict() for s in stages]
    for law in S.LAWS:
        assert list(S.arrivals(as_json, law, 3)) == list(S.arrivals(stages, law, 3))
    with pytest.raises(ValueError):
        list(S.arrivals([Stage(1, float("nan"), 1)], "uniform", 0))
