"""The server's own figures beside the client's latency: scrape /metrics once a second, as deltas.

`Scraper(control_url, key, public_url=None, public_key=None)`: `await sc.sample()` GETs the
control plane's /metrics (and the public plane's, when given) and returns one `server` entry of a
run's per-second series, derived from the change since the previous sample:

- `busy_workers`: worker busy-seconds gained per second (`wb_pool_busy_seconds_total`), i.e. how
  many workers were busy on average; `workers`: serving workers (ready + busy); `queue_depth`;
- `renders_s`: pool replies that succeeded, per second (`wb_pool_requests_total{outcome="ok"}`);
- `overloaded`, `deadline`: pool error replies in the interval; `restarts`: supervisor restarts;
- `http`: responses per plane process in the interval, `{"control-<pid>"|"public-<pid>": {"200": n}}`.

Rates are per second of the broker's own clock (`wb_pool_broker_uptime_seconds`) when it is
there, so a slow scrape does not skew them. The first sample is the baseline (rates None, counts 0). Counters that went down (a restarted
broker) count from zero, as Prometheus's rate() does. `totals()` sums the run: overloaded,
deadline, restarts, http_5xx (from the planes' totals, `wb_*_plane_requests_total`, which never go
backwards when a plane process dies), whether any scrape worked, and a note on what failed.
A server that is down, slow (2 s), or refuses the key is recorded in the note, never raised, and
the key never appears in it.

`parse_prometheus(text)` reads the text exposition format (0.0.4, and OpenMetrics' additions it
may meet: `# EOF`, exemplars): escapes in label values, +Inf/-Inf/NaN, timestamps, comments;
a line it cannot read is skipped.
"""

from __future__ import annotations

import math
import ssl
from urllib.parse import urlsplit

import h11
import trio

from workbooks.errors import UsageError

SCRAPE_TIMEOUT_S = 2.0
MAX_BODY = 32 * 1024 * 1024

_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_NAME_CHARS = _NAME_START | set("0123456789")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_value(tok: str) -> float | None:
    t = tok.strip()
    low = t.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low == "nan":
        return math.nan
    try:
        return float(t)
    except ValueError:
        return None


def _parse_line(line: str) -> tuple[str, dict, float] | None:
    i, n = 0, len(line)
    while i < n and line[i] in " \t":
        i += 1
    start = i
    if i >= n or line[i] not in _NAME_START:
        return None
    while i < n and line[i] in _NAME_CHARS:
        i += 1
    name = line[start:i]
    labels: dict[str, str] = {}
    after_name = i
    while i < n and line[i] in " \t":
        i += 1
    if i >= n or line[i] != "{":
        i = after_name
    else:
        i += 1
        while True:
            while i < n and line[i] in " \t,":
                i += 1
            if i >= n:
                return None
            if line[i] == "}":
                i += 1
                break
            ls = i
            while i < n and line[i] in _NAME_CHARS:
                i += 1
            lname = line[ls:i]
            while i < n and line[i] in " \t":
                i += 1
            if not lname or i >= n or line[i] != "=":
                return None
            i += 1
            while i < n and line[i] in " \t":
                i += 1
            if i >= n or line[i] != '"':
                return None
            i += 1
            buf = []
            while True:
                if i >= n:
                    return None  # unterminated value
                c = line[i]
                if c == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    buf.append(_ESCAPES.get(nxt, "\\" + nxt))
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                buf.append(c)
                i += 1
            labels[lname] = "".join(buf)
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == ",":
                i += 1
            elif i < n and line[i] == "}":
                i += 1
                break
            else:
                return None
    rest = line[i:]
    if rest and rest[0] not in " \t":
        return None
    rest = rest.split("#", 1)[0]  # an OpenMetrics exemplar follows " # "
    parts = rest.split()
    if not parts or len(parts) > 2:
        return None
    value = _parse_value(parts[0])
    if value is None:
        return None
    return name, labels, value


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """Samples of a Prometheus text exposition: `(name, labels, value)`, in order; comments,
    blank and unreadable lines are skipped."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        got = _parse_line(line)
        if got is not None:
            out.append(got)
    return out


class _Fetch:
    """One GET of a /metrics URL over h11 (plain or TLS); a new connection each time, so a plane
    with several processes on one port answers from whichever the kernel picks."""

    def __init__(self, base_url: str):
        u = urlsplit(base_url if "://" in base_url else "http://" + base_url)
        try:
            port = u.port
        except ValueError:
            port = -1
        if u.scheme not in ("http", "https") or not u.hostname or port == -1:
            raise UsageError(f"not an http(s) URL for /metrics: {base_url[:200]!r}",
                             hint="give the plane's base URL, e.g. http://127.0.0.1:4000")
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = port or (443 if self.https else 80)
        self.netloc = u.netloc.rsplit("@", 1)[-1]
        path = u.path.rstrip("/")
        self.target = path if path.endswith("/metrics") else path + "/metrics"

    async def get(self, key: str | None) -> tuple[int, bytes]:
        stream = await trio.open_tcp_stream(self.host, self.port)
        try:
            if self.https:
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=self.host)
                await stream.do_handshake()
            conn = h11.Connection(h11.CLIENT)
            headers = [("Host", self.netloc), ("Accept", "text/plain"), ("Connection", "close"),
                       ("User-Agent", "wbx-loadtest-scraper")]
            if key:
                headers.append(("Authorization", f"Bearer {key}"))
            await stream.send_all(conn.send(h11.Request(method="GET", target=self.target, headers=headers)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            status, body = 0, bytearray()
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    body += ev.data
                    if len(body) > MAX_BODY:
                        raise ValueError(f"/metrics answered more than {MAX_BODY} bytes")
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, bytes(body)
        finally:
            await stream.aclose()


def _key(name: str, labels: dict) -> tuple:
    return (name, tuple(sorted(labels.items())))


def _delta(cur: float | None, prev: float | None) -> float | None:
    """Increase of a counter; a counter that went down restarted from zero."""
    if cur is None or prev is None:
        return None
    if cur < prev:
        return cur
    return cur - prev


class Scraper:
    def __init__(self, control_url: str, key: str | None, public_url: str | None = None,
                 public_key: str | None = None, *, timeout: float = SCRAPE_TIMEOUT_S):
        self._targets = [("control", _Fetch(control_url), key)]
        if public_url:
            self._targets.append(("public", _Fetch(public_url), public_key if public_key is not None else key))
        self.timeout = timeout
        self._prev_t: dict = {}  # when the previous good scrape was taken
        self._prev_state: dict = {}  # the figures of the previous good scrape
        self._problems: dict[str, int] = {}
        self._samples = 0
        self._ok = 0
        self._totals = {"overloaded": 0, "deadline": 0, "restarts": 0, "http_5xx": 0}

    # -- fetching ---------------------------------------------------------------------------
    async def _scrape(self, plane: str, fetch: _Fetch, key: str | None) -> dict | None:
        why = None
        try:
            with trio.move_on_after(self.timeout) as cs:
                status, body = await fetch.get(key)
            if cs.cancelled_caught:
                why = f"no answer within {self.timeout:g}s"
            elif status != 200:
                hint = {401: "unauthorized: pass an operator or admin key (--key / WB_API_KEY)",
                        403: "forbidden: the key needs scope operator or admin"}.get(status, "")
                why = f"HTTP {status}" + (f" ({hint})" if hint else "")
            else:
                out: dict = {}
                for name, labels, value in parse_prometheus(body.decode("utf-8", "replace")):
                    out[_key(name, labels)] = value
                return out
        except Exception as e:  # noqa: BLE001 - whatever the server did, the run goes on (Cancelled is not an Exception)
            why = f"down ({type(e).__name__}: {str(e)[:120]})" if str(e) else f"down ({type(e).__name__})"
        label = f"{plane} plane {fetch.netloc}{fetch.target}: {why}"
        self._problems[label] = self._problems.get(label, 0) + 1
        return None

    # -- one sample ---------------------------------------------------------------------------
    async def sample(self) -> dict:
        """One `server` entry of the series (see the module docstring). Never raises on a down server."""
        self._samples += 1
        now = trio.current_time()
        got: dict[str, dict | None] = {}
        async with trio.open_nursery() as nursery:
            for plane, fetch, key in self._targets:
                async def one(plane=plane, fetch=fetch, key=key):
                    got[plane] = await self._scrape(plane, fetch, key)
                nursery.start_soon(one)
        entry = {"busy_workers": None, "workers": None, "queue_depth": None, "renders_s": None,
                 "overloaded": 0, "deadline": 0, "restarts": 0, "http": {}, "up": got.get("control") is not None}
        control = got.get("control")
        if control is not None:
            self._ok += 1
            self._from_control(entry, control, now)
        for plane in ("control", "public"):
            cur = got.get(plane)
            if cur is not None:
                self._http(entry, plane, cur, now)
        return entry

    def _from_control(self, entry: dict, cur: dict, now: float) -> None:
        def total(name, **match):
            vals = [v for (n, lb), v in cur.items() if n == name and all(dict(lb).get(k) == w for k, w in match.items())]
            return sum(vals) if vals else None

        serving = [v for (n, lb), v in cur.items() if n == "wb_pool_workers_current" and dict(lb).get("state") in ("ready", "busy")]
        entry["workers"] = int(sum(serving)) if serving else None
        q = total("wb_pool_queue_depth")
        entry["queue_depth"] = int(q) if q is not None else None
        # A counter with no sample yet is 0 when its source answered (no restart so far, no error
        # of that code); None only when the source did not answer (its figures are unknown).
        pool_up = q is not None
        sup_up = total("wb_up", source="supervisor") == 1 or total("wb_supervisor_up") == 1

        def counter(name, up, **match):
            v = total(name, **match)
            return v if v is not None else (0.0 if up else None)

        state = {
            "busy": counter("wb_pool_busy_seconds_total", pool_up),
            "ok": counter("wb_pool_requests_total", pool_up, outcome="ok"),
            "overloaded": counter("wb_pool_errors_total", pool_up, code="overloaded"),
            "deadline": counter("wb_pool_errors_total", pool_up, code="deadline"),
            "restarts": total("wb_supervisor_restarts_total"),
            "clock": total("wb_pool_broker_uptime_seconds"),
        }
        if state["restarts"] is None:  # no joined supervisor figures: its status fallback, else none yet
            state["restarts"] = counter("wb_child_restarts_total", sup_up)
        prev = self._prev_state.get("control")
        prev_t = self._prev_t.get("control")
        self._prev_state["control"], self._prev_t["control"] = state, now
        if prev is None:
            return  # the baseline
        dt = max(now - prev_t, 1e-6)
        if state["clock"] is not None and prev["clock"] is not None and state["clock"] > prev["clock"]:
            # the broker's own clock between the two figures: a scrape's delay does not skew the rates
            dt = max(state["clock"] - prev["clock"], 1e-3)
        busy = _delta(state["busy"], prev["busy"])
        entry["busy_workers"] = round(busy / dt, 3) if busy is not None else None
        ok = _delta(state["ok"], prev["ok"])
        entry["renders_s"] = round(ok / dt, 1) if ok is not None else None
        for k in ("overloaded", "deadline", "restarts"):
            d = _delta(state[k], prev[k])
            if d:
                entry[k] = int(round(d))
                self._totals[k] += entry[k]

    def _http(self, entry: dict, plane: str, cur: dict, now: float) -> None:
        per_proc = f"wb_{plane}_requests_total"
        plane_total = f"wb_{plane}_plane_requests_total"
        counts = {}
        fives = 0.0
        have_plane_total = False
        for (n, lb), v in cur.items():
            if n == per_proc:
                d = dict(lb)
                pid = d.get("pid")
                if pid and pid.isdigit() and "status" in d:
                    counts[(pid, d["status"])] = v
            elif n == plane_total:
                have_plane_total = True
                if dict(lb).get("status", "")[:1] == "5":
                    fives += v
        prev = self._prev_state.get(plane + ":http")
        self._prev_state[plane + ":http"] = {"counts": counts, "fives": fives if have_plane_total else None}
        if prev is None:
            return
        pc = prev["counts"]
        seen_pids = {pid for pid, _ in pc}
        for (pid, status), v in counts.items():
            if pid in seen_pids:
                d = _delta(v, pc.get((pid, status), 0.0))
            else:
                d = v  # a process started since the last scrape: all of its count is new
            if d:
                entry["http"].setdefault(f"{plane}-{pid}", {})[status] = int(round(d))
        if have_plane_total and prev["fives"] is not None:
            d = _delta(fives, prev["fives"])
        else:  # an older server without plane totals: what the processes seen answered
            d = sum(n for k, v in entry["http"].items() if k.startswith(plane + "-") for s, n in v.items() if s[:1] == "5")
        if d:
            self._totals["http_5xx"] += int(round(d))

    # -- the run -------------------------------------------------------------------------------
    def totals(self) -> dict:
        """`{"overloaded", "deadline", "restarts", "http_5xx", "scraped", "note"}` over the run."""
        notes = [f"{what} ({n} of {self._samples} scrapes)" for what, n in self._problems.items()]
        if self._samples == 0:
            notes.append("never scraped")
        return {**self._totals, "scraped": self._ok > 0, "note": "; ".join(notes) or None}
