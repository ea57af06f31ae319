"""The load-test plan: what to load, how hard, for how long, and what counts as passing.

A plan comes from a TOML file (`load_toml`, flat keys named like the `Plan` fields, plus `rate` and
`duration` for a single hold) and the command line (`build_plan(toml, flags)`: a flag that is not None
overrides the file). It is validated once, here, so every later part can trust it: each bad value
is a `UsageError` naming the key and the value, with a hint saying what is accepted; an unknown key
is refused by name. `Plan.to_dict()` / `Plan.from_dict()` round-trip through run.json.

The API key is never part of a plan: `Plan.api_key()` reads `runtime_key` (the `--key` value, set
by the CLI at run time, left out of `to_dict()` and of `repr`) or the environment variable named by
`key_env` (default `WB_API_KEY`; only `WB_…` names, so a shared plan cannot send another secret of
the environment to the URL it names). A `key = ...` line in a plan file is refused, and so is any
value shaped like a Workbooks API key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import stat as stat_mod
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from workbooks.errors import UsageError
from workbooks.loadtest import units

TARGETS = ("page", "render-api", "pool", "synthetic")
OPS = ("render", "query", "tangle", "lint", "deploy")
SIZE_CLASSES = ("S", "M", "L", "XL")
ARRIVALS = ("uniform", "poisson")
MODELS = ("open", "closed")
ENCODINGS = ("gzip", "identity")

DEFAULT_PAGE_URL = "http://127.0.0.1:4001"
DEFAULT_CONTROL_URL = "http://127.0.0.1:4000"
DEFAULT_DURATION_S = 10.0

#: Limits that keep a hostile or mistyped plan from asking for the absurd (they are far above
#: anything one box can send or anyone means to wait for).
MAX_RATE = 10_000_000.0
MAX_TOTAL_S = 7 * 24 * 3600.0
MAX_STAGES = 1000
MAX_PATHS = 100_000
MAX_PATH_LEN = 8192
MAX_PLAN_BYTES = 1 << 20
MAX_THRESHOLDS = 100

STAGES_HINT = ("comma-separated DUR:RATE holds and DUR:A-B ramps, e.g. 5s:0-400,30s:400,10s:400-0; "
               "in TOML also [[stages]] tables with duration and rate, or duration, start and end")


@dataclass(frozen=True)
class Stage:
    """`duration` seconds of load whose rate goes linearly from `start` to `end` req/s (a hold
    has start == end)."""

    duration: float
    start: float
    end: float

    def to_dict(self) -> dict:
        return {"duration": self.duration, "start": self.start, "end": self.end}

    @property
    def arrivals(self) -> float:
        """The integral of the rate over the stage (expected requests)."""
        return (self.start + self.end) / 2 * self.duration


def _stage(duration: float, start: float, end: float, where: str) -> Stage:
    if duration <= 0:
        raise UsageError(f"{where}: a stage must last more than 0 s", hint=STAGES_HINT)
    for r in (start, end):
        if r > MAX_RATE:
            raise UsageError(f"{where}: rate {r:g}/s is above the limit of {MAX_RATE:g}/s", hint=STAGES_HINT)
    return Stage(float(duration), float(start), float(end))


def parse_stages(spec: str, what: str = "stages") -> list[Stage]:
    """`"5s:0-400,30s:400,10s:400-0"` -> [Stage(5,0,400), Stage(30,400,400), Stage(10,400,0)]."""
    if not isinstance(spec, str):
        raise UsageError(f"{what} {spec!r}: expected a string", hint=STAGES_HINT)
    if len(spec) > 64 * MAX_STAGES:
        raise UsageError(f"{what}: the specification is too long", hint=STAGES_HINT)
    items = [s.strip() for s in spec.split(",")]
    if not spec.strip() or any(not s for s in items):
        raise UsageError(f"{what} {spec!r}: an empty stage", hint=STAGES_HINT)
    if len(items) > MAX_STAGES:
        raise UsageError(f"{what}: {len(items)} stages, at most {MAX_STAGES}", hint=STAGES_HINT)
    out = []
    for item in items:
        dur, sep, rate = item.partition(":")
        where = f"{what} item {item!r}"
        if not sep or not rate.strip():
            raise UsageError(f"{where}: expected DUR:RATE or DUR:A-B", hint=STAGES_HINT)
        a, dash, b = rate.partition("-")
        with _stage_hint():
            d = units.parse_duration(dur.strip(), where)
            start = units.parse_rate(a.strip(), where)
            end = units.parse_rate(b.strip(), where) if dash else start
        out.append(_stage(d, start, end, where))
    _check_total(out, what)
    return out


@contextlib.contextmanager
def _stage_hint():
    """A unit error inside a stage also says what a stage looks like."""
    try:
        yield
    except UsageError as e:
        if STAGES_HINT not in e.hint:
            e.hint = f"{STAGES_HINT}. {e.hint}"
        raise


def _check_total(stages: list[Stage], what: str) -> None:
    total = sum(s.duration for s in stages)
    if total > MAX_TOTAL_S:
        raise UsageError(f"{what}: {total:g} s in all, above the limit of {MAX_TOTAL_S:g} s (7 days)",
                         hint=STAGES_HINT)


def _stages_value(value, what: str) -> list[Stage]:
    """Stages from a spec string, a list of spec strings, or a list of TOML tables."""
    if isinstance(value, str):
        return parse_stages(value, what)
    if not isinstance(value, list) or not value:
        raise UsageError(f"{what}: expected a non-empty string or list, got {value!r}"[:300], hint=STAGES_HINT)
    if len(value) > MAX_STAGES:
        raise UsageError(f"{what}: {len(value)} stages, at most {MAX_STAGES}", hint=STAGES_HINT)
    out: list[Stage] = []
    for i, item in enumerate(value):
        where = f"{what}[{i}]"
        if isinstance(item, str):
            out.extend(parse_stages(item, where))
        elif isinstance(item, Stage):
            out.append(_stage(item.duration, item.start, item.end, where))
        elif isinstance(item, dict):
            keys = set(item)
            unknown = keys - {"duration", "rate", "start", "end"}
            if unknown:
                raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}", hint=STAGES_HINT)
            if "duration" not in item:
                raise UsageError(f"{where}: no duration", hint=STAGES_HINT)
            with _stage_hint():
                d = units.parse_duration(item["duration"], f"{where}.duration")
            if "rate" in item:
                if "start" in item or "end" in item:
                    raise UsageError(f"{where}: give rate (a hold) or start and end (a ramp), not both",
                                     hint=STAGES_HINT)
                with _stage_hint():
                    a = b = units.parse_rate(item["rate"], f"{where}.rate")
            elif "start" in item and "end" in item:
                with _stage_hint():
                    a = units.parse_rate(item["start"], f"{where}.start")
                    b = units.parse_rate(item["end"], f"{where}.end")
            else:
                raise UsageError(f"{where}: give rate (a hold) or start and end (a ramp)", hint=STAGES_HINT)
            out.append(_stage(d, a, b, where))
        else:
            raise UsageError(f"{where}: expected a string or a table, got {type(item).__name__}", hint=STAGES_HINT)
    if len(out) > MAX_STAGES:
        raise UsageError(f"{what}: {len(out)} stages, at most {MAX_STAGES}", hint=STAGES_HINT)
    _check_total(out, what)
    return out


@dataclass
class Plan:
    """One load test, fully resolved (see the module docstring for where it comes from)."""

    target: str = "page"
    url: str | None = None
    host: str | None = None
    paths: list[str] = field(default_factory=list)
    accept_encoding: str = "gzip"
    ops: dict[str, float] = field(default_factory=lambda: {"render": 1.0})
    pool_endpoint: str | None = None
    pool_server_key: str | None = None
    pool_client_key: str | None = None
    key_env: str = "WB_API_KEY"
    stages: list[Stage] = field(default_factory=list)
    arrival: str = "uniform"
    seed: int = 0
    model: str = "open"
    connections: int = 64
    max_inflight: int = 4096
    timeout: float = 30.0
    procs: int = 1
    remote: int = 0
    listen: str | None = None
    thresholds: list[str] = field(default_factory=list)
    abort_on_fail: bool = False
    grace: float = 5.0
    allow_saturated: bool = False
    corpus: str | None = None
    sizes: dict[str, float] = field(default_factory=dict)
    hostile_share: float = 0.0
    scrape: bool = True
    metrics_url: str | None = None
    public_metrics_url: str | None = None
    synthetic: dict = field(default_factory=dict)
    closed_concurrency: int = 32
    out: str | None = None
    name: str = ""
    #: the `--key` value, set at run time; never serialised, never shown by repr
    runtime_key: str | None = field(default=None, repr=False, compare=False)

    @property
    def duration(self) -> float:
        """Seconds of load: the sum of the stages."""
        return sum(s.duration for s in self.stages)

    def rate_at(self, t: float) -> float:
        """The target rate (req/s) t seconds after the start (0 before and after the stages)."""
        if t < 0:
            return 0.0
        at = 0.0
        for s in self.stages:
            if t < at + s.duration:
                return s.start + (s.end - s.start) * (t - at) / s.duration
            at += s.duration
        return 0.0

    def stage_starts(self) -> list[float]:
        """Seconds after the start at which each stage begins."""
        out, at = [], 0.0
        for s in self.stages:
            out.append(at)
            at += s.duration
        return out

    def api_key(self) -> str | None:
        """The API key for the render API and /metrics: `--key`, else `$<key_env>`, else `$WB_API_KEY`."""
        if self.runtime_key:
            return self.runtime_key
        for name in (self.key_env, "WB_API_KEY"):
            if name and os.environ.get(name):
                return os.environ[name]
        return None

    def to_dict(self) -> dict:
        """Plain JSON types; never the API key."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "runtime_key":
                continue
            v = getattr(self, f.name)
            if f.name == "stages":
                v = [s.to_dict() for s in v]
            elif isinstance(v, (list, dict)):
                v = _copy(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """The inverse of `to_dict` (validated like a plan file; a key is refused by name)."""
        if not isinstance(d, dict):
            raise UsageError(f"a plan must be an object, got {type(d).__name__}", hint=KEYS_HINT)
        d = dict(d)
        stages = d.pop("stages", None)
        plan = _validated(d, where="plan")
        if stages is not None:
            plan.stages = _stages_value(stages, "stages") if stages else []
        return plan


def _copy(v):
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


_FIELDS = {f.name: f for f in dataclasses.fields(Plan) if f.name != "runtime_key"}
#: keys a plan file may hold besides the Plan fields
EXTRA_KEYS = ("rate", "duration")
KEYS_HINT = "plan keys: " + ", ".join(sorted([*_FIELDS, *EXTRA_KEYS]))
_SECRET_KEYS = {"key", "api_key", "apikey", "token", "secret", "password", "runtime_key"}

_HOST_RE = re.compile(r"[A-Za-z0-9._\-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")
#: key_env may only name a Workbooks variable: a shared plan file must not be able to send, say,
#: $AWS_SECRET_ACCESS_KEY to the URL it names
_ENV_RE = re.compile(r"WB_[A-Z0-9_]{1,124}")
_Z85_RE = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_CTRL_RE = re.compile(r"[\x00-\x20\x7f]")


def _str(value, key: str, *, hint: str, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{key} = {value!r}: expected a string"[:300], hint=hint)
    if len(value) > max_len:
        raise UsageError(f"{key}: longer than {max_len} characters", hint=hint)
    if "\x00" in value:
        raise UsageError(f"{key}: contains a NUL character", hint=hint)
    return value


def _int(value, key: str, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{key} = {value!r}: expected a whole number", hint=hint)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,19}\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise UsageError(f"{key} = {value!r}: expected a whole number"[:300], hint=hint)
    if not lo <= value <= hi:
        raise UsageError(f"{key} = {value}: must be between {lo} and {hi}", hint=hint)
    return value


def _bool(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise UsageError(f"{key} = {value!r}: expected true or false"[:300], hint=f"{key} = true or {key} = false")


def _fraction(value, key: str, hint: str) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            x = float(value.strip()[:-1]) / 100
        except ValueError:
            raise UsageError(f"{key} = {value!r}: not a percentage", hint=hint) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value)
    else:
        raise UsageError(f"{key} = {value!r}: expected a number between 0 and 1 or a percentage"[:300], hint=hint)
    if not (0.0 <= x <= 1.0):
        raise UsageError(f"{key} = {value!r}: must be between 0 and 1 (0% and 100%)", hint=hint)
    return x


def _weights(value, key: str, allowed: tuple[str, ...] | None, hint: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise UsageError(f"{key} = {value!r}: expected a table of weights"[:300], hint=hint)
    out = {}
    for name, w in value.items():
        if allowed is not None and name not in allowed:
            raise UsageError(f"{key}: unknown name {name!r}", hint=hint)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UsageError(f"{key}.{name} = {w!r}: a weight is a finite number >= 0"[:300], hint=hint)
        out[str(name)] = float(w)
    if value and sum(out.values()) <= 0:
        raise UsageError(f"{key}: every weight is 0, nothing would be sent", hint=hint)
    return out


def _url(value, key: str) -> str:
    hint = "an http:// or https:// base URL such as http://127.0.0.1:4001 (no user:password@, no ?query)"
    text = _str(value, key, hint=hint, max_len=2048).strip()
    if _CTRL_RE.search(text) or not text.isascii():
        raise UsageError(f"{key} = {text[:200]!r}: contains spaces, control or non-ASCII characters",
                         hint=hint + "; an international domain name in its xn-- form")
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError as e:
        raise UsageError(f"{key} = {text!r}: {e}", hint=hint) from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"{key} = {text!r}: not an http(s) URL with a host", hint=hint)
    if u.username is not None or u.password is not None:
        # a credential in the URL would end up in run.json and in logs
        raise UsageError(f"{key}: the URL holds a user name or password; it would be written to run.json",
                         hint="pass the API key with --key or WB_API_KEY (key_env), never in a URL")
    if u.query or u.fragment:
        raise UsageError(f"{key} = {text!r}: a base URL has no ?query or #fragment", hint=hint)
    if port == 0:
        raise UsageError(f"{key} = {text!r}: port 0", hint=hint)
    return text.rstrip("/")


def _zmq_endpoint(value, key: str, schemes: tuple[str, ...]) -> str:
    hint = "a ZeroMQ endpoint: " + " or ".join(f"{s}://…" for s in schemes) + " (e.g. tcp://0.0.0.0:5590)"
    text = _str(value, key, hint=hint, max_len=1024).strip()
    if _CTRL_RE.search(text) or not any(text.startswith(s + "://") and len(text) > len(s) + 3 for s in schemes):
        raise UsageError(f"{key} = {text!r}: not an endpoint", hint=hint)
    return text


def _path(value, key: str) -> str:
    hint = "an absolute request path such as / or /notes.html (no spaces or control characters)"
    p = _str(value, key, hint=hint, max_len=MAX_PATH_LEN)
    if not p.startswith("/") or p.startswith("//") or _CTRL_RE.search(p):
        raise UsageError(f"{key} = {p[:200]!r}: not an absolute request path", hint=hint)
    if not p.isascii():
        raise UsageError(f"{key} = {p[:200]!r}: a request path is ASCII", hint="percent-encode other characters (é -> %C3%A9)")
    return p


def _synthetic(value, key: str) -> dict:
    hint = ('a table for the synthetic target, e.g. {latency_ms = [1, 2, 5]} or {fn = "k%97"}; '
            "plain numbers, strings, booleans and lists of them")
    if not isinstance(value, dict):
        raise UsageError(f"{key} = {value!r}: expected a table"[:300], hint=hint)

    def plain(v, depth=0):
        if depth > 4:
            raise UsageError(f"{key}: nested too deeply", hint=hint)
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"{key}: {v!r} is not a finite number", hint=hint)
            return v
        if isinstance(v, list):
            if len(v) > 100_000:
                raise UsageError(f"{key}: a list longer than 100000", hint=hint)
            return [plain(x, depth + 1) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x, depth + 1) for k, x in v.items()}
        raise UsageError(f"{key}: {type(v).__name__} values are not accepted", hint=hint)

    return plain(value)


def _set(plan: Plan, key: str, value, where: str) -> None:
    """Validate one plan key and store it on `plan` (stages, rate and duration are not handled here)."""
    name = key
    k = f"{where}.{key}" if where not in ("", "plan") else key
    if value is None:
        if _FIELDS[name].default is None:
            setattr(plan, name, None)
            return
        raise UsageError(f"{k}: null is not accepted", hint=KEYS_HINT)
    if name == "target":
        if value not in TARGETS:
            raise UsageError(f"{k} = {value!r}: unknown target", hint="target: " + " | ".join(TARGETS))
    elif name in ("url", "metrics_url", "public_metrics_url"):
        value = _url(value, k)
    elif name == "host":
        value = _str(value, k, hint="a host name such as demo.localhost (the Host header)", max_len=300).strip()
        if not _HOST_RE.fullmatch(value):
            raise UsageError(f"{k} = {value[:100]!r}: not a host name",
                             hint="a host name such as demo.localhost, optionally with :port")
    elif name == "paths":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UsageError(f"{k}: expected a list of paths", hint='paths = ["/", "/notes.html"]')
        if len(value) > MAX_PATHS:
            raise UsageError(f"{k}: {len(value)} paths, at most {MAX_PATHS}", hint='paths = ["/", "/notes.html"]')
        value = [_path(p, f"{k}[{i}]") for i, p in enumerate(value)]
    elif name == "accept_encoding":
        if value not in ENCODINGS:
            raise UsageError(f"{k} = {value!r}: not accepted", hint="accept_encoding: gzip | identity")
    elif name == "ops":
        value = _weights(value, k, OPS, "ops: weights over " + ", ".join(OPS) + ', e.g. {render = 3, query = 1}')
        if not value:
            raise UsageError(f"{k}: no operation", hint="ops: weights over " + ", ".join(OPS))
    elif name == "sizes":
        value = _weights(value, k, SIZE_CLASSES, "sizes: weights over S, M, L, XL, e.g. {S = 3, M = 1}")
    elif name == "pool_endpoint":
        value = _zmq_endpoint(value, k, ("ipc", "tcp"))
    elif name == "listen":
        value = _zmq_endpoint(value, k, ("tcp",))
    elif name == "pool_server_key":
        value = _str(value, k, hint="the broker's CURVE public key: 40 Z85 characters").strip()
        if not _Z85_RE.fullmatch(value):
            raise UsageError(f"{k}: not a 40-character Z85 public key",
                             hint="the broker's CURVE public key: 40 Z85 characters")
    elif name in ("pool_client_key", "corpus", "out"):
        value = _str(value, k, hint="a file system path", max_len=4096)
        if not value.strip():
            raise UsageError(f"{k}: an empty path", hint="a file system path")
    elif name == "key_env":
        env_hint = ("the name (not the value) of an environment variable starting with WB_, e.g. WB_API_KEY "
                    "or WB_STAGING_KEY: a plan may only read Workbooks keys")
        value = _str(value, k, hint=env_hint)
        if not _ENV_RE.fullmatch(value):
            raise UsageError(f"{k} = {value[:100]!r}: not a WB_ environment variable name", hint=env_hint)
    elif name == "arrival":
        if value not in ARRIVALS:
            raise UsageError(f"{k} = {value!r}: unknown arrival law", hint="arrival: uniform | poisson")
    elif name == "model":
        if value not in MODELS:
            raise UsageError(f"{k} = {value!r}: unknown load model", hint="model: open | closed")
    elif name == "seed":
        value = _int(value, k, 0, 2**63 - 1, "seed: a whole number >= 0")
    elif name == "connections":
        value = _int(value, k, 0, 1_000_000, "connections: keep-alive connections per process, 0 = unlimited")
    elif name == "max_inflight":
        value = _int(value, k, 1, 10_000_000, "max_inflight: requests in flight per process, >= 1")
    elif name == "closed_concurrency":
        value = _int(value, k, 1, 1_000_000, "closed_concurrency: loops of the closed model, >= 1")
    elif name == "procs":
        value = _int(value, k, 1, 256, "procs: local generator processes, 1..256")
    elif name == "remote":
        value = _int(value, k, 0, 1024, "remote: remote generators to wait for, 0..1024")
    elif name == "timeout":
        value = units.parse_duration(value, k)
        if not 0 < value <= 3600:
            raise UsageError(f"{k}: {value:g} s, must be above 0 and at most 1 h", hint=units.DURATION_HINT)
    elif name == "grace":
        value = units.parse_duration(value, k)
        if value > MAX_TOTAL_S:
            raise UsageError(f"{k}: {value:g} s is longer than any run", hint=units.DURATION_HINT)
    elif name in ("abort_on_fail", "allow_saturated", "scrape"):
        value = _bool(value, k)
    elif name == "hostile_share":
        value = _fraction(value, k, "hostile_share: the share of hostile documents, 0..1 or 0%..100%")
    elif name == "thresholds":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UsageError(f"{k}: expected a list of expressions", hint='thresholds = ["latency.p99 < 50ms"]')
        if len(value) > MAX_THRESHOLDS:
            raise UsageError(f"{k}: {len(value)} thresholds, at most {MAX_THRESHOLDS}",
                             hint='thresholds = ["latency.p99 < 50ms"]')
        from workbooks.loadtest import thresholds as T

        out = []
        for i, e in enumerate(value):
            _str(e, f"{k}[{i}]", hint=T.HINT, max_len=300)
            T.parse(e)  # a bad expression fails now, before any load is sent
            out.append(e.strip())
        value = out
    elif name == "synthetic":
        value = _synthetic(value, k)
    elif name == "name":
        value = _str(value, k, hint="a short name for the run", max_len=200)
        if re.search(r"[\x00-\x1f\x7f]", value):
            raise UsageError(f"{k}: contains control characters", hint="a short name for the run")
    elif name == "stages":
        value = _stages_value(value, k)
    setattr(plan, name, _copy(value))


#: the shape of a Workbooks API key (workbooks.store.db: "wbk_" + token_urlsafe(32))
_API_KEY_RE = re.compile(r"wbk_[A-Za-z0-9_\-]{20,}")


def _refuse_keys(key: str, value, where: str) -> None:
    """A value that looks like an API key is refused wherever it is: it would be written to run.json."""
    if isinstance(value, str):
        if _API_KEY_RE.search(value):
            raise UsageError(f"{where}: {key} holds what looks like an API key; a plan never holds one "
                             "(it would be written to run.json)",
                             hint="pass it with --key or the WB_API_KEY environment variable "
                                  "(key_env names another variable)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _refuse_keys(key, k, where)
            _refuse_keys(key, v, where)
    elif isinstance(value, list):
        for v in value:
            _refuse_keys(key, v, where)


def _validated(d: dict, where: str) -> Plan:
    plan = Plan()
    for key, value in d.items():
        if not isinstance(key, str):
            raise UsageError(f"{where}: a key must be a string, got {key!r}"[:300], hint=KEYS_HINT)
        if key.lower() in _SECRET_KEYS:
            raise UsageError(f"{where}: {key!r} is not read from a plan: the API key never goes in a plan",
                             hint="pass it with --key or the WB_API_KEY environment variable "
                                  "(key_env names another variable)")
        if key not in _FIELDS:
            raise UsageError(f"{where}: unknown key {key!r}", hint=KEYS_HINT)
        _refuse_keys(key, value, where)  # first: an error below may quote the value
        _set(plan, key, value, where)
    return plan


def load_toml(path) -> dict:
    """A plan file's TOML as a dict (keys are checked by `build_plan`). Bad files are UsageErrors."""
    p = Path(path)
    hint = "a TOML plan file, e.g. load/plans/demo-page.toml"
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"plan file {str(p)!r} does not exist", hint=hint) from None
    except OSError as e:
        raise UsageError(f"plan file {str(p)!r}: {e.strerror}", hint=hint) from None
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise UsageError(f"plan file {str(p)!r} is not a regular file", hint=hint)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_PLAN_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_PLAN_BYTES:
        raise UsageError(f"plan file {str(p)!r} is larger than {MAX_PLAN_BYTES} bytes", hint=hint)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"plan file {str(p)!r} is not UTF-8 (byte {e.start})", hint=hint) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"plan file {str(p)!r}: {e}", hint=hint + " (see https://toml.io)") from None
    except RecursionError:
        raise UsageError(f"plan file {str(p)!r}: arrays or tables nested too deeply", hint=hint) from None
    return data


def build_plan(toml: dict, flags: dict | None = None) -> Plan:
    """The Plan from a plan file's dict and the command line's flags.

    A flag that is not None overrides the file. The load comes from, in order: `--stages`,
    `--rate` (a hold for `--duration`, else the file's `duration`, else 10 s), the file's `stages`,
    the file's `rate` (+ `duration`). `duration` is ignored when stages decide. A closed-model plan
    may give only a duration (no target rate). `metrics_url` defaults to the control plane: `url`
    for render-api, http://127.0.0.1:4000 otherwise.
    """
    if not isinstance(toml, dict):
        raise UsageError(f"a plan must be a table, got {type(toml).__name__}", hint=KEYS_HINT)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for key in flags:
        if key not in _FIELDS and key not in EXTRA_KEYS:
            raise UsageError(f"unknown plan flag {key!r}", hint=KEYS_HINT)
    file_load = {k: toml[k] for k in ("stages", *EXTRA_KEYS) if k in toml}
    for k, v in [*file_load.items(), *((k, flags[k]) for k in ("stages", *EXTRA_KEYS) if k in flags)]:
        _refuse_keys(k, v, "plan")
    fields = {k: v for k, v in toml.items() if k not in ("stages", *EXTRA_KEYS)}
    plan = _validated(fields, where="plan")
    for key, value in flags.items():
        if key not in ("stages", *EXTRA_KEYS):
            _refuse_keys(key, value, "--" + key.replace("_", "-"))
            _set(plan, key, value, where="")

    duration_src = flags.get("duration", file_load.get("duration"))
    duration = (units.parse_duration(duration_src, "duration") if duration_src is not None else DEFAULT_DURATION_S)
    if duration_src is not None and not 0 < duration <= MAX_TOTAL_S:
        raise UsageError(f"duration: {duration:g} s, must be above 0 and at most 7 days", hint=units.DURATION_HINT)

    def hold(rate_src, key):
        r = units.parse_rate(rate_src, key)
        return [_stage(duration, r, r, key)]

    if "stages" in flags:
        plan.stages = _stages_value(flags["stages"], "--stages")
    elif "rate" in flags:
        plan.stages = hold(flags["rate"], "--rate")
    elif "stages" in file_load:
        plan.stages = _stages_value(file_load["stages"], "stages")
    elif "rate" in file_load:
        plan.stages = hold(file_load["rate"], "rate")
    elif plan.model == "closed" and duration_src is not None:
        plan.stages = [Stage(duration, 0.0, 0.0)]
    elif plan.model == "closed":
        raise UsageError("a closed-model plan needs a duration (or stages)",
                         hint='--closed --duration 30s --concurrency 32; in a plan file model = "closed" and '
                              'duration = "30s"')
    else:
        raise UsageError("the plan sends no load: give a rate or stages",
                         hint="--rate 400 --duration 30s, or --stages 5s:0-400,30s:400; in a plan file "
                              'rate = 400 and duration = "30s", or stages = "5s:0-400,30s:400"')
    if plan.model == "open" and not any(s.start > 0 or s.end > 0 for s in plan.stages):
        raise UsageError("every stage has rate 0: an open-model run would send nothing",
                         hint="give a rate above 0, or model = closed with closed_concurrency")

    if plan.url is None and plan.target == "page":
        plan.url = DEFAULT_PAGE_URL
    if plan.url is None and plan.target == "render-api":
        plan.url = DEFAULT_CONTROL_URL
    if plan.metrics_url is None and plan.target in ("page", "render-api"):
        plan.metrics_url = plan.url if plan.target == "render-api" else DEFAULT_CONTROL_URL
    if plan.target == "pool" and not plan.pool_endpoint:
        raise UsageError("target pool needs pool_endpoint", hint="--pool-endpoint ipc://… or tcp://…")
    if plan.pool_endpoint and plan.pool_endpoint.startswith("tcp://") and plan.target == "pool" \
            and not (plan.pool_server_key and plan.pool_client_key):
        raise UsageError("a tcp pool endpoint needs pool_server_key and pool_client_key (CURVE)",
                         hint="--server-key <broker public key, Z85> --client-key <key file>")
    if plan.model == "closed" and plan.closed_concurrency < 1:
        raise UsageError("closed_concurrency must be >= 1", hint="closed_concurrency: loops of the closed model")
    return plan
