"""`wbx loadtest` plans: units as people write them, TOML plans and flags, validation that names the
key and says what is accepted, the checked-in example plan, and the API key kept out of every
serialised form."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from conftest import run_wbx
from workbooks.errors import UsageError
from workbooks.loadtest import plan as P
from workbooks.loadtest import units as U

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLAN = ROOT / "load" / "plans" / "demo-page.toml"


# -- units ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("10s", 10.0), ("1m30s", 90.0), ("2h", 7200.0), ("1.5s", 1.5), (3, 3.0), ("3", 3.0),
    ("500us", 0.0005), ("1m 30s", 90.0), (".5s", 0.5), ("2min", 120.0), (0, 0.0), (2.5, 2.5),
])
def test_durations(text, seconds):
    assert U.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "-1s", "10x", "s", "1s1", "ms10", "1e999s", "nan", "inf", True, None, [1],
                                 float("nan"), float("inf"), -3, "1" * 100])
def test_bad_durations_name_the_value_and_say_what_is_accepted(bad):
    with pytest.raises(UsageError) as e:
        U.parse_duration(bad, "timeout")
    assert "timeout" in e.value.message
    assert "250ms" in e.value.hint and "1m30s" in e.value.hint


@pytest.mark.parametrize("text,rate", [("400", 400.0), ("400/s", 400.0), ("24000/m", 400.0), ("36000/h", 10.0),
                                       (7.5, 7.5), ("0", 0.0), ("60/min", 1.0)])
def test_rates(text, rate):
    assert U.parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("bad", ["400/", "/s", "-3", "4/d", "abc", "1e400", False, {}])
def test_bad_rates(bad):
    with pytest.raises(UsageError) as e:
        U.parse_rate(bad, "rate")
    assert "rate" in e.value.message and "24000/m" in e.value.hint


def test_bytes_and_ms_formatting():
    assert U.parse_bytes("8KB") == 8000
    assert U.parse_bytes("8KiB") == 8192
    assert U.parse_bytes("1MiB") == 1 << 20
    assert U.parse_bytes(512) == 512
    for bad in ("1.5B", "8XB", "-1", "1e30GiB"):
        with pytest.raises(UsageError) as e:
            U.parse_bytes(bad, "size")
        assert "KiB" in e.value.hint
    assert U.fmt_ms(0.25) == "250µs"
    assert U.fmt_ms(5.5) == "5.50ms"
    assert U.fmt_ms(12.345) == "12.3ms"
    assert U.fmt_ms(1234) == "1.23s"
    assert U.fmt_ms(None) == "-"


# -- stages ---------------------------------------------------------------------------------------
def test_stages_spec():
    st = P.parse_stages("5s:0-400,30s:400,10s:400-0")
    assert st == [P.Stage(5, 0, 400), P.Stage(30, 400, 400), P.Stage(10, 400, 0)]
    assert P.parse_stages(" 1m : 24000/m ") == [P.Stage(60, 400, 400)]


@pytest.mark.parametrize("bad", ["", ",", "5s", "5s:", ":400", "0s:400", "5s:400-", "5s:-400", "5s:a-b",
                                 "5s:400,,5s:1", "5s:1e12", "9000h:1", "5s:400;10s:1"])
def test_bad_stages(bad):
    with pytest.raises(UsageError) as e:
        P.parse_stages(bad)
    assert "DUR:RATE" in e.value.hint


def test_plan_duration_and_rate_at():
    p = P.Plan(stages=P.parse_stages("10s:0-100,10s:100"))
    assert p.duration == 20
    assert p.rate_at(0) == 0 and p.rate_at(5) == pytest.approx(50) and p.rate_at(15) == 100
    assert p.rate_at(-1) == 0 and p.rate_at(20) == 0
    assert p.stage_starts() == [0, 10]


# -- the example plan -----------------------------------------------------------------------------
def test_demo_plan_loads_and_points_at_the_first_run_demo():
    from workbooks.web_control.first_run import WORKBOOK

    p = P.build_plan(P.load_toml(DEMO_PLAN), {})
    assert p.target == "page" and p.url == "http://127.0.0.1:4001"
    assert p.host == f"{WORKBOOK}.localhost"
    assert p.duration > 0 and p.thresholds
    assert p.metrics_url == "http://127.0.0.1:4000"


def test_plan_round_trips_through_json():
    p = P.build_plan(P.load_toml(DEMO_PLAN), {"arrival": "poisson", "ops": {"render": 3, "query": 1},
                                             "sizes": {"S": 1, "XL": 0.5}, "synthetic": {"latency_ms": [1, 2]}})
    back = P.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p
    assert back.stages == p.stages


# -- flags over the file --------------------------------------------------------------------------
def _write(tmp_path, text: str) -> Path:
    f = tmp_path / "plan.toml"
    f.write_text(text)
    return f


def test_flags_override_the_file_and_stages_win_over_rate(tmp_path):
    toml = P.load_toml(_write(tmp_path, 'target = "page"\nrate = 100\nduration = "20s"\nconnections = 8\n'))
    p = P.build_plan(toml, {})
    assert p.stages == [P.Stage(20, 100, 100)] and p.connections == 8
    p = P.build_plan(toml, {"rate": "50", "connections": 16, "url": None})
    assert p.stages == [P.Stage(20, 50, 50)] and p.connections == 16
    p = P.build_plan(toml, {"rate": "50", "duration": "5s"})
    assert p.stages == [P.Stage(5, 50, 50)]
    p = P.build_plan(toml, {"rate": "50", "stages": "2s:0-10,3s:10"})
    assert p.stages == [P.Stage(2, 0, 10), P.Stage(3, 10, 10)]
    # a bare rate holds for 10 s
    assert P.build_plan({}, {"rate": "7"}).stages == [P.Stage(10, 7, 7)]
    # a file's stages, as a table array
    toml = P.load_toml(_write(tmp_path, '[[stages]]\nduration = "5s"\nstart = 0\nend = 40\n'
                                        '[[stages]]\nduration = 10\nrate = "2400/m"\n'))
    assert P.build_plan(toml, {}).stages == [P.Stage(5, 0, 40), P.Stage(10, 40, 40)]


def test_defaults_per_target():
    p = P.build_plan({}, {"target": "render-api", "rate": 5})
    assert p.url == "http://127.0.0.1:4000" and p.metrics_url == p.url and p.ops == {"render": 1.0}
    p = P.build_plan({}, {"rate": 5})
    assert p.target == "page" and p.url == "http://127.0.0.1:4001" and p.accept_encoding == "gzip"
    assert (p.connections, p.max_inflight, p.timeout, p.procs, p.remote, p.grace) == (64, 4096, 30.0, 1, 0, 5.0)
    assert p.scrape is True and p.model == "open" and p.arrival == "uniform"


def test_closed_model_may_give_only_a_duration_and_open_needs_load():
    p = P.build_plan({}, {"model": "closed", "duration": "3s", "closed_concurrency": 4})
    assert p.duration == 3 and p.closed_concurrency == 4
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {})
    assert "--rate" in e.value.hint
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {"stages": "5s:0"})
    assert "rate 0" in e.value.message


# -- bad plans: each names the key and says what is accepted --------------------------------------
@pytest.mark.parametrize("line,key,hint_part", [
    ("bogus = 1", "bogus", "plan keys"),
    ("target = 'ftp'", "target", "render-api"),
    ("connections = 'many'", "connections", "keep-alive"),
    ("connections = -1", "connections", "keep-alive"),
    ("connections = true", "connections", "keep-alive"),
    ("max_inflight = 0", "max_inflight", ">= 1"),
    ("procs = 1000", "procs", "1..256"),
    ("timeout = '-1s'", "timeout", "250ms"),
    ("timeout = '2h'", "timeout", "250ms"),
    ("seed = true", "seed", "whole number"),
    ("seed = 1.5", "seed", "whole number"),
    ("url = 'ftp://x'", "url", "http"),
    ("url = 'http://admin:hunter2@127.0.0.1:4000'", "url", "--key"),
    ("url = 'http://127.0.0.1:4000/?a=1'", "url", "no ?query"),
    ("url = 'http://127.0.0.1:99999'", "url", "http"),
    ("host = \"demo.localhost\\r\\nX-Evil: 1\"", "host", "host name"),
    ("paths = ['index.html']", "paths[0]", "absolute"),
    ("paths = ['/a b']", "paths[0]", "absolute"),
    ("paths = ['//evil.example/x']", "paths[0]", "absolute"),
    ("ops = {render = 1, explode = 2}", "ops", "render, query"),
    ("ops = {render = 0}", "ops", "render, query"),
    ("ops = {render = -1}", "ops.render", "render, query"),
    ("sizes = {XXL = 1}", "sizes", "S, M, L, XL"),
    ("arrival = 'bursty'", "arrival", "poisson"),
    ("model = 'half-open'", "model", "closed"),
    ("accept_encoding = 'br'", "accept_encoding", "identity"),
    ("hostile_share = 1.5", "hostile_share", "0..1"),
    ("hostile_share = '150%'", "hostile_share", "0..1"),
    ("abort_on_fail = 'yes'", "abort_on_fail", "true"),
    ("key_env = 'not a name'", "key_env", "environment variable"),
    ("key_env = 'AWS_SECRET_ACCESS_KEY'", "key_env", "only read Workbooks keys"),
    ("key_env = 'wb_api_key'", "key_env", "WB_"),
    ("pool_server_key = 'short'", "pool_server_key", "Z85"),
    ("listen = 'udp://0.0.0.0:1'", "listen", "tcp://"),
    ("thresholds = ['latency.p42 < 5ms']", "latency.p42", "errors.rate"),
    ("thresholds = 'latency.p99 <'", "latency.p99", "errors.rate"),
    ("stages = '5s:100,5s:oops'", "stages", "DUR:RATE"),
    ("stages = 42", "stages", "DUR:RATE"),
    ("stages = [{duration = '5s'}]", "stages[0]", "DUR:RATE"),
    ("stages = [{duration = '5s', rate = 1, start = 0, end = 1}]", "stages[0]", "DUR:RATE"),
    ("stages = [{duration = '5s', rate = 1, wobble = 1}]", "wobble", "DUR:RATE"),
    ("rate = 'fast'", "rate", "24000/m"),
    ("duration = 'forever'", "duration", "250ms"),
    ("synthetic = {latency_ms = [1, {a = {b = {c = {d = {e = 1}}}}}]}", "synthetic", "synthetic"),
])
def test_bad_plan_values_name_the_key(tmp_path, line, key, hint_part):
    text = line if line.startswith(("rate", "stages", "duration")) else "rate = 10\n" + line
    with pytest.raises(UsageError) as e:
        P.build_plan(P.load_toml(_write(tmp_path, text + "\n")), {})
    assert key in e.value.message, e.value.message
    assert hint_part in e.value.hint, e.value.hint


def test_bad_flags_are_refused_like_plan_keys():
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {"rate": "10", "connections": "lots"})
    assert "connections" in e.value.message
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {"rate": "ten"})
    assert "--rate" in e.value.message
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {"rate": "10", "frobnicate": 1})
    assert "frobnicate" in e.value.message


@pytest.mark.parametrize("content", [b"rate = \n", b"[stages\n", b"\xff\xfe rate = 1\n", b"rate = 1\nrate = 2\n"])
def test_unreadable_plan_files(tmp_path, content):
    f = tmp_path / "bad.toml"
    f.write_bytes(content)
    with pytest.raises(UsageError) as e:
        P.load_toml(f)
    assert "bad.toml" in e.value.message and "TOML" in e.value.hint


def test_plan_files_that_are_not_regular_files_or_too_large(tmp_path):
    with pytest.raises(UsageError) as e:
        P.load_toml(tmp_path / "missing.toml")
    assert "does not exist" in e.value.message
    with pytest.raises(UsageError) as e:
        P.load_toml(tmp_path)
    assert "not a regular file" in e.value.message
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError) as e:  # a FIFO nobody writes to: refused at once, not waited on
        P.load_toml(fifo)
    assert "not a regular file" in e.value.message
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (P.MAX_PLAN_BYTES + 10) + "\nrate = 1\n")
    with pytest.raises(UsageError) as e:
        P.load_toml(big)
    assert "larger than" in e.value.message


def test_absurd_loads_are_refused(tmp_path):
    for spec in ("1s:20000000", "200h:1"):
        with pytest.raises(UsageError):
            P.build_plan({}, {"stages": spec})
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {"stages": ",".join(["1s:1"] * (P.MAX_STAGES + 1))})
    assert "at most" in e.value.message


# -- the API key ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["key", "api_key", "token", "runtime_key"])
def test_a_key_in_a_plan_file_is_refused(tmp_path, key):
    with pytest.raises(UsageError) as e:
        P.build_plan(P.load_toml(_write(tmp_path, f'rate = 1\n{key} = "s3cret-value"\n')), {})
    assert "never goes in a plan" in e.value.message and "WB_API_KEY" in e.value.hint
    assert "s3cret-value" not in e.value.message + e.value.hint


def test_the_runtime_key_is_never_serialised(monkeypatch):
    monkeypatch.delenv("WB_API_KEY", raising=False)
    monkeypatch.delenv("WB_LT_TEST_KEY", raising=False)
    p = P.build_plan({}, {"rate": 1})
    assert p.api_key() is None
    monkeypatch.setenv("WB_API_KEY", "from-env")
    assert p.api_key() == "from-env"
    p2 = P.build_plan({"key_env": "WB_LT_TEST_KEY"}, {"rate": 1})
    monkeypatch.setenv("WB_LT_TEST_KEY", "from-named-env")
    assert p2.api_key() == "from-named-env"
    p.runtime_key = "from-flag-secret"
    assert p.api_key() == "from-flag-secret"
    assert "from-flag-secret" not in json.dumps(p.to_dict()) and "from-flag-secret" not in repr(p)
    assert "runtime_key" not in p.to_dict()
    # find-max and friends copy plans with dataclasses.replace: the key goes along
    assert dataclasses.replace(p, stages=[P.Stage(1, 1, 1)]).api_key() == "from-flag-secret"
    with pytest.raises(UsageError):
        P.Plan.from_dict({**p.to_dict(), "runtime_key": "x"})


def test_cli_refuses_a_bad_plan_with_exit_2(tmp_path):
    f = _write(tmp_path, "rate = 10\nconnectoins = 4\n")
    r = run_wbx("loadtest", "run", str(f), "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["kind"] == "usage" and "connectoins" in err["message"] and "connections" in err["hint"]


@pytest.mark.parametrize("text,key", [
    ("rate = 1\npaths = ['/caf\u00e9']\n", "paths[0]"),
    ("rate = 1\nurl = 'http://b\u00fccher.example:4001'\n", "url"),
    ("rate = 1\nsynthetic = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
    ("rate = [" + "[" * 5000 + "]" * 5000 + "]\n", "nested too deeply"),
])
def test_hostile_plan_text(tmp_path, text, key):
    with pytest.raises(UsageError) as e:
        P.build_plan(P.load_toml(_write(tmp_path, text)), {})
    assert key in e.value.message


@pytest.mark.parametrize("line", [
    'key_env = "wbk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"',
    'name = "nightly wbk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"',
    'synthetic = {note = "wbk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}',
])
def test_a_value_that_looks_like_an_api_key_is_refused(tmp_path, line):
    with pytest.raises(UsageError) as e:
        P.build_plan(P.load_toml(_write(tmp_path, "rate = 1\n" + line + "\n")), {})
    assert "looks like an API key" in e.value.message and "AAAAAAAAAAAA" not in e.value.message
    with pytest.raises(UsageError):
        P.build_plan({}, {"rate": 1, "name": "wbk_" + "B" * 43})


def test_closed_model_without_a_duration_says_so():
    with pytest.raises(UsageError) as e:
        P.build_plan({}, {"model": "closed"})
    assert "--duration" in e.value.hint


# -- anything at all: a Plan or a UsageError, never a crash --------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from workbooks.loadtest import thresholds as TH  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                     st.sampled_from(["10s", "1m30s", "400/s", "page", "poisson", "closed", "http://127.0.0.1:1",
                                      "/", "latency.p99<5ms", "5s:0-10", "gzip", "S", "0.5%", "tcp://127.0.0.1:5"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=12)
_keys = st.sampled_from([*P._FIELDS, *P.EXTRA_KEYS, "key", "bogus"])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(toml=st.dictionaries(_keys, _values, max_size=6), flags=st.dictionaries(_keys, _values, max_size=3))
def test_any_plan_is_a_plan_or_a_usage_error(toml, flags):
    try:
        p = P.build_plan(toml, flags)
    except UsageError as e:
        assert e.message and e.hint
        return
    assert p.duration > 0
    assert P.Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.text(max_size=60), st.from_regex(
    r"(latency|lag|errors|dropped|rate|server)(\{[a-z= ,]{0,12}\})?\.[a-z0-9.]{1,8} ?[<>=!]{1,2} ?[0-9.%a-z/]{0,8}",
    fullmatch=True)))
def test_any_threshold_text_parses_or_is_a_usage_error(text):
    try:
        th = TH.parse(text)
    except UsageError as e:
        assert "latency." in e.hint
        return
    assert th.op in TH.OPS and th.limit >= 0
    row = TH.evaluate([th], {})[0]
    assert row["ok"] is False and row["why"]


@settings(max_examples=300, deadline=None)
@given(_scalars)
def test_any_unit_text_is_a_number_or_a_usage_error(v):
    for fn in (U.parse_duration, U.parse_rate, U.parse_bytes):
        try:
            x = fn(v)
        except UsageError:
            continue
        assert x >= 0 and x == x and x != float("inf")


@pytest.mark.parametrize("toml,flags", [
    ({"url": "http://127.0.0.1:1/?k=wbk_" + "C" * 43}, {"rate": 1}),
    ({"rate": "wbk_" + "C" * 43}, {}),
    ({}, {"stages": "wbk_" + "C" * 43}),
    ({"key_env": "wbk_" + "C" * 43}, {"rate": 1}),
])
def test_no_error_message_quotes_a_key(toml, flags):
    with pytest.raises(UsageError) as e:
        P.build_plan(toml, flags)
    assert "CCCCCCCC" not in e.value.message + e.value.hint
