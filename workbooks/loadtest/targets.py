"""What a load test sends, and to whom: the page, render-api, pool and synthetic targets.

Every target answers the engine the same way: `next(k)` is request k (a pure function of k and
the plan's seed, so N generator processes that split the arrivals between them send exactly
what one would), `connect()` a connection slot, `send(conn, req)` one exchange ->
`(status, time of the first byte, bytes)` or a `TransportError(kind)`. Request bytes are built
once per request shape and reused; the API key goes into those bytes and nowhere else
(`describe()` never holds it).

- page: GET paths of one deployed host (`Host` and `Accept-Encoding` set), from the plan or the
  host's `/sitemap.xml`.
- render-api: `POST /api/oql/{render,query,tangle,lint}` with corpus documents, and deploys
  (`PUT /api/workbooks/lt-<n>`, each one a real change), `Authorization: Bearer <key>`.
- pool: the kernel pool itself through `AsyncPoolClient`, on ipc or CURVE tcp.
- synthetic: no network; request k takes a latency that is a pure function of k (a list cycled
  or an arithmetic expression of k) and fails when the parameters say so. Merge tests use it.
"""

from __future__ import annotations

import ast
import http.client
import json
import operator
import os
import re
import time
from html import unescape
from urllib.parse import urlsplit

import trio

from workbooks.errors import UsageError
from workbooks.loadtest.corpus import Corpus, Doc
from workbooks.loadtest.httpclient import HTTPClient, TransportError, build_request, parse_base_url

USER_AGENT = "wbx-loadtest"
RENDER_API_OPS = ("render", "query", "tangle", "lint", "deploy")
POOL_OPS = {"render": "render", "query": "parse_headlines", "tangle": "tangle_plan", "lint": "validate"}
DEPLOY_NAMES = 8  # deploys rotate over lt-0 .. lt-7
SITEMAP_MAX_BYTES = 16 << 20
SITEMAP_MAX_PATHS = 100_000  # the first ones are used beyond this (describe() says so)
OP_SLOTS = 1024
_perf = time.perf_counter
_M64 = (1 << 64) - 1


def mix(k: int, seed: int) -> int:
    """splitmix64 of (k, seed): the deterministic choice of request k's op and document."""
    z = (k * 0x9E3779B97F4A7C15 + (seed + 1) * 0xD1B54A32D192ED03) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class Req:
    __slots__ = ("op", "size", "payload", "k")

    def __init__(self, op: str, size: str, payload, k: int = 0):
        self.op = op
        self.size = size
        self.payload = payload
        self.k = k

    def __repr__(self) -> str:  # never the payload: it may carry the API key
        return f"Req(op={self.op!r}, size={self.size!r}, k={self.k})"


def _wheel(weights: dict[str, float], slots: int) -> list[str]:
    from workbooks.loadtest.corpus import _apportion

    counts = _apportion(weights, slots)
    out = [op for op in sorted(counts) for _ in range(counts[op])]
    # interleave deterministically (a stride co-prime with the slot count), so consecutive k mix ops
    return [out[(i * 613) % slots] for i in range(slots)]


class _HTTPTarget:
    """Shared by page and render-api: one HTTPClient, one keep-alive Conn per engine connection."""

    default_url = "http://127.0.0.1:4000"

    def __init__(self, plan):
        self.plan = plan
        self.url = plan.url or self.default_url
        try:
            host, port = parse_base_url(self.url)
        except ValueError as e:
            raise UsageError(f"--url: {e}", hint="e.g. --url http://127.0.0.1:4001") from None
        self.client = HTTPClient(host, port)
        self.timeout = float(getattr(plan, "timeout", 30.0) or 30.0)

    async def connect(self):
        return self.client.conn()

    async def send(self, conn, req: Req):
        return await self.client.request(conn, req.payload, trio.current_time() + self.timeout)

    @property
    def connects(self) -> int:
        return self.client.connects

    async def aclose(self) -> None:
        pass


class PageTarget(_HTTPTarget):
    name = "page"
    default_url = "http://127.0.0.1:4001"

    def __init__(self, plan):
        super().__init__(plan)
        # no Host given: the local demo's on a loopback server, else the URL's own
        local = self.client.host in ("127.0.0.1", "localhost", "::1")
        self.host = plan.host or ("demo.localhost" if local else f"{self.client.host}:{self.client.port}")
        self.accept_encoding = getattr(plan, "accept_encoding", None) or "gzip"
        self.paths = list(plan.paths or [])
        self.seed = int(getattr(plan, "seed", 0) or 0)
        self.source = "plan" if self.paths else "sitemap"
        self.truncated = False
        self._reqs: list[Req] = []

    async def setup(self) -> None:
        if not self.paths:
            self.paths = await trio.to_thread.run_sync(self._sitemap_paths)
        hdrs = {"Host": self.host, "User-Agent": USER_AGENT, "Accept-Encoding": self.accept_encoding}
        try:
            self._reqs = [Req("page", "-", build_request("GET", p, hdrs)) for p in self.paths]
        except ValueError as e:
            raise UsageError(f"page target: {e}") from None

    def _sitemap_paths(self) -> list[str]:
        c = http.client.HTTPConnection(self.client.host, self.client.port, timeout=min(self.timeout, 10.0))
        try:
            c.request("GET", "/sitemap.xml", headers={"Host": self.host, "User-Agent": USER_AGENT,
                                                       "Accept-Encoding": "identity"})
            r = c.getresponse()
            body = r.read(SITEMAP_MAX_BYTES + 1)
        except (OSError, http.client.HTTPException) as e:
            raise UsageError(f"cannot read {self.url}/sitemap.xml for Host {self.host}: {str(e)[:200] or type(e).__name__}",
                             hint="is the server up? or list the paths (--path / `paths` in the plan)") from None
        finally:
            c.close()
        if r.status != 200:
            raise UsageError(f"{self.url}/sitemap.xml for Host {self.host} answered {r.status}",
                             hint="check --host (the deployed site's name), or list the paths in the plan")
        if len(body) > SITEMAP_MAX_BYTES:
            raise UsageError(f"sitemap.xml of {self.host} is over {SITEMAP_MAX_BYTES >> 20} MiB")
        paths: list[str] = []
        seen: set[str] = set()
        for loc in re.findall(rb"<loc>\s*([^<]*?)\s*</loc>", body):
            u = urlsplit(unescape(loc.decode("utf-8", "replace")))
            p = (u.path or "/") + (f"?{u.query}" if u.query else "")
            if p not in seen:
                seen.add(p)
                paths.append(p)
                if len(paths) >= SITEMAP_MAX_PATHS:
                    self.truncated = True
                    break
        if not paths:
            raise UsageError(f"sitemap.xml of {self.host} lists no URL", hint="list the paths in the plan")
        return paths

    def next(self, k: int) -> Req:
        reqs = self._reqs
        return reqs[mix(k, self.seed) % len(reqs)] if len(reqs) > 1 else reqs[0]

    def describe(self) -> dict:
        return {"target": "page", "url": self.url, "host": self.host, "accept_encoding": self.accept_encoding,
                "paths": len(self.paths), "paths_from": self.source, "sample_paths": self.paths[:10],
                **({"paths_truncated_at": SITEMAP_MAX_PATHS} if self.truncated else {})}


class RenderApiTarget(_HTTPTarget):
    name = "render-api"

    def __init__(self, plan, corpus: Corpus):
        super().__init__(plan)
        self.corpus = corpus
        ops = dict(getattr(plan, "ops", None) or {"render": 1.0})
        bad = [o for o in ops if o not in RENDER_API_OPS]
        if bad:
            raise UsageError(f"unknown render-api op {bad[0]!r}", hint=f"ops: {', '.join(RENDER_API_OPS)}")
        if not any(float(w) > 0 for w in ops.values()) or any(float(w) < 0 for w in ops.values()):
            raise UsageError("render-api op weights must be >= 0 with at least one positive")
        self.ops = {o: float(w) for o, w in ops.items()}
        key = plan.api_key() if hasattr(plan, "api_key") else None
        if not key:
            env = getattr(plan, "key_env", None) or "WB_API_KEY"
            raise UsageError("the render-api target needs an API key",
                             hint=f"pass --key or set {env} (the key is never written to the plan or run.json)")
        self._auth = f"Bearer {key}"
        self.tenant = getattr(plan, "tenant", None)
        self.seed = int(getattr(plan, "seed", 0) or 0)
        self.host = f"{self.client.host}:{self.client.port}"  # the control plane's own (plan.host is the page's)
        self._opwheel = _wheel({o: w for o, w in self.ops.items() if w > 0}, OP_SLOTS)
        self._docs = corpus.wheel(self.seed)
        self._cache: dict[tuple[str, int], Req] = {}

    async def setup(self) -> None:
        await self.client.resolve()
        await trio.to_thread.run_sync(self._preflight)

    def _preflight(self) -> None:
        """One GET /api/workbooks before the load: a refused key or a key that cannot deploy is a
        clear usage error now, not a whole run of 401s."""
        hdrs = {k: v for k, v in self._headers("application/json").items() if k != "Content-Type"}
        c = http.client.HTTPConnection(self.client.host, self.client.port, timeout=min(self.timeout, 10.0))
        try:
            c.request("GET", "/api/workbooks", headers=hdrs)
            r = c.getresponse()
            body = r.read(65536)
        except (OSError, http.client.HTTPException) as e:
            raise UsageError(f"cannot reach the control plane at {self.url}: {str(e)[:200] or type(e).__name__}",
                             hint="is `wbx serve` up? --url names the control plane (default http://127.0.0.1:4000)") from None
        finally:
            c.close()
        try:
            code = (json.loads(body).get("error") or {}).get("code") if r.status >= 400 else None
        except (ValueError, AttributeError):
            code = None
        if r.status == 401:
            raise UsageError(f"the control plane at {self.url} refused the API key (401)",
                             hint="pass a valid key with --key or the environment variable the plan names")
        if r.status >= 400 and self.ops.get("deploy"):
            why = "an admin key must name the tenant, which a plan does not" if code == "tenant_required" else f"{r.status} {code or ''}".strip()
            raise UsageError(f"deploys need a tenant key: GET /api/workbooks answered {why}",
                             hint="create one with POST /api/tenants/<tenant>/keys and pass it with --key")

    def _headers(self, ctype: str) -> dict:
        h = {"Host": self.host, "User-Agent": USER_AGENT, "Authorization": self._auth, "Content-Type": ctype}
        if self.tenant:
            h["X-Workbooks-Tenant"] = self.tenant
        return h

    def next(self, k: int) -> Req:
        h = mix(k, self.seed)
        op = self._opwheel[h % OP_SLOTS]
        docs = self._docs
        doc = docs[(h >> 16) % len(docs)]
        if op == "deploy":  # every deploy is a real change (a comment naming k), so each one commits
            body = doc.body + f"\n# wbx loadtest deploy {k}\n".encode()
            return Req(op, doc.size_class, build_request("PUT", f"/api/workbooks/lt-{k % DEPLOY_NAMES}",
                                                         self._headers("text/org; charset=utf-8"), body), k)
        key = (op, id(doc))
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = Req(op, doc.size_class, build_request(
                "POST", f"/api/oql/{op}", self._headers("text/plain; charset=utf-8"), doc.body))
        return r

    def describe(self) -> dict:
        return {"target": "render-api", "url": self.url, "host": self.host, "ops": self.ops,
                "tenant": self.tenant, "corpus": _corpus_summary(self.corpus)}


class PoolTarget:
    name = "pool"

    def __init__(self, plan, corpus: Corpus):
        self.plan = plan
        self.corpus = corpus
        ops = dict(getattr(plan, "ops", None) or {"render": 1.0})
        if "deploy" in ops and ops["deploy"]:
            raise UsageError("the pool target has no deploy op", hint="deploys go through the render-api target")
        ops.pop("deploy", None)
        bad = [o for o in ops if o not in POOL_OPS]
        if bad:
            raise UsageError(f"unknown pool op {bad[0]!r}", hint=f"ops: {', '.join(POOL_OPS)}")
        if not any(float(w) > 0 for w in ops.values()):
            raise UsageError("pool op weights must have at least one positive")
        self.ops = {o: float(w) for o, w in ops.items()}
        self.endpoint = getattr(plan, "pool_endpoint", None)
        if not self.endpoint:
            from workbooks.pool import endpoints as E

            self.endpoint = E.client_endpoint()
        self.curve = None
        if self.endpoint.startswith("tcp://"):
            self.curve = _curve(getattr(plan, "pool_server_key", None), getattr(plan, "pool_client_key", None))
        elif not self.endpoint.startswith("ipc://"):
            raise UsageError(f"pool endpoint {self.endpoint!r}: use ipc://PATH or tcp://HOST:PORT")
        self.timeout = float(getattr(plan, "timeout", 30.0) or 30.0)
        from workbooks.pool import protocol as P

        self.deadline_ms = max(1, min(int(self.timeout * 1000), P.MAX_DEADLINE_MS))
        self.seed = int(getattr(plan, "seed", 0) or 0)
        self._opwheel = _wheel({o: w for o, w in self.ops.items() if w > 0}, OP_SLOTS)
        self._docs = corpus.wheel(self.seed)
        self._cache: dict[tuple[str, int], Req] = {}
        self.client = None

    async def setup(self) -> None:
        from workbooks.pool.client import AsyncPoolClient, PoolError

        self._PoolError = PoolError
        self.client = AsyncPoolClient(self.endpoint, curve=self.curve)

    async def connect(self):
        return _PoolConn(self.client)

    def next(self, k: int) -> Req:
        h = mix(k, self.seed)
        op = self._opwheel[h % OP_SLOTS]
        docs = self._docs
        doc = docs[(h >> 16) % len(docs)]
        key = (op, id(doc))
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = Req(op, doc.size_class, (POOL_OPS[op], [doc.text]))
        return r

    async def send(self, conn, req: Req):
        kop, args = req.payload
        try:
            out = await conn.client.call(kop, args, self.deadline_ms)
        except self._PoolError as e:
            raise TransportError(e.code, e.message) from None
        return 200, _perf(), len(out)

    @property
    def connects(self) -> int:
        return 1 if self.client is not None else 0

    def describe(self) -> dict:
        return {"target": "pool", "endpoint": self.endpoint, "curve": self.curve is not None, "ops": self.ops,
                "corpus": _corpus_summary(self.corpus)}

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class _PoolConn:
    __slots__ = ("client",)

    def __init__(self, client):
        self.client = client

    def close(self) -> None:
        pass


def _curve(server_key, client_key) -> tuple[bytes, bytes, bytes]:
    import struct

    from zmq.utils import z85

    from workbooks.pool.endpoints import load_keypair

    if not server_key or not client_key:
        raise UsageError("a tcp pool endpoint needs CURVE keys",
                         hint="pass the pool's server public key (Z85, or its server.key file) and a client .key_secret "
                              "file made by `wbx ops keys` on the pool's host")
    try:
        if os.path.exists(server_key):
            server_public, _ = load_keypair(server_key)
        else:
            server_public = server_key.encode() if isinstance(server_key, str) else bytes(server_key)
            try:
                ok = len(server_public) == 40 and len(z85.decode(server_public)) == 32
            except (ValueError, KeyError, IndexError, struct.error):
                ok = False
            if not ok:
                raise ValueError("the server key is neither a file nor a 40-character Z85 public key")
        client_public, client_secret = load_keypair(client_key)
    except (OSError, ValueError) as e:
        raise UsageError(f"bad CURVE key: {e}") from None
    if not client_secret:
        raise UsageError(f"{client_key} holds no secret key", hint="use the client's .key_secret file")
    return server_public, client_public, client_secret


# -- synthetic ---------------------------------------------------------------------------------

MAX_FN_CHARS = 8192
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Mod: operator.mod,
           ast.FloorDiv: operator.floordiv, ast.Div: operator.truediv}


def compile_fn(expr: str):
    """A latency function of k (ms) from an arithmetic expression: k, numbers, + - * / // %, ( )."""
    if len(str(expr)) > MAX_FN_CHARS:
        raise UsageError(f"synthetic fn is over {MAX_FN_CHARS} characters")
    try:
        tree = ast.parse(str(expr), mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        raise UsageError(f"synthetic fn {str(expr)[:60]!r} is not an expression (or is nested too deeply)",
                         hint="an arithmetic expression of k, e.g. \"k % 97\" or \"1 + (k * 7) % 50\"") from None

    def check(n):
        if isinstance(n, ast.Expression):
            return check(n.body)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return check(n.left) and check(n.right)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return check(n.operand)
        if isinstance(n, ast.Name) and n.id == "k":
            return True
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            return True
        raise UsageError(f"synthetic fn {str(expr)[:60]!r}: only k, numbers and + - * / // % are allowed")

    try:
        check(tree)
    except RecursionError:
        raise UsageError(f"synthetic fn is nested too deeply (at most {MAX_FN_CHARS} characters, shallow nesting)") from None

    def ev(n, k):
        if isinstance(n, ast.BinOp):
            return _BINOPS[type(n.op)](ev(n.left, k), ev(n.right, k))
        if isinstance(n, ast.UnaryOp):
            return -ev(n.operand, k)
        if isinstance(n, ast.Name):
            return k
        return n.value

    body = tree.body
    return lambda k: ev(body, k)


class SyntheticTarget:
    """No network: arrival k sleeps latency(k) ms; `error_every` N fails every k with k % N == N - 1
    (`error`: "http_503" by default, or a transport kind such as "timeout")."""

    name = "synthetic"

    def __init__(self, plan):
        p = dict(getattr(plan, "synthetic", None) or {})
        unknown = set(p) - {"latency_ms", "fn", "error_every", "error", "op", "size"}
        if unknown:
            raise UsageError(f"unknown synthetic parameter {sorted(unknown)[0]!r}",
                             hint="synthetic takes latency_ms (list, cycled), fn (expression of k), error_every, error")
        if "latency_ms" in p and "fn" in p:
            raise UsageError("synthetic: give latency_ms or fn, not both")
        if "fn" in p:
            f = compile_fn(p["fn"])
            self.latency = lambda k: max(0.0, float(f(k))) / 1000.0
        else:
            lat = p.get("latency_ms", [1.0])
            if isinstance(lat, (int, float)):
                lat = [lat]
            try:
                cyc = [max(0.0, float(x)) / 1000.0 for x in lat]
            except (TypeError, ValueError):
                raise UsageError("synthetic latency_ms must be a list of numbers") from None
            if not cyc:
                raise UsageError("synthetic latency_ms is empty")
            n = len(cyc)
            self.latency = (lambda k: cyc[k % n]) if n > 1 else (lambda k, v=cyc[0]: v)
        self.error_every = int(p.get("error_every") or 0)
        if self.error_every < 0:
            raise UsageError("synthetic error_every must be >= 0")
        err = str(p.get("error", "http_503"))
        m = re.fullmatch(r"http_([1-5]\d\d)", err)
        self.error_status = int(m.group(1)) if m else None
        self.error_kind = None if m else err
        self.op = str(p.get("op", "synthetic"))
        self.size = str(p.get("size", "-"))
        self.params = p
        self.timeout = float(getattr(plan, "timeout", 30.0) or 30.0)
        self.connects = 0

    async def setup(self) -> None:
        pass

    async def connect(self):
        self.connects += 1
        return _PoolConn(None)

    def next(self, k: int) -> Req:
        return Req(self.op, self.size, k, k)

    async def send(self, conn, req: Req):
        k = req.payload
        try:
            lat = self.latency(k)
        except (ArithmeticError, RecursionError):  # e.g. fn "1 / (k - 5)" at k = 5
            raise TransportError("fn_error", f"synthetic fn failed at k={k}") from None
        if lat > self.timeout:
            await trio.sleep(self.timeout)
            raise TransportError("timeout", "synthetic latency over the plan's timeout")
        await trio.sleep(lat)
        if self.error_every and k % self.error_every == self.error_every - 1:
            if self.error_kind:
                raise TransportError(self.error_kind, "synthetic failure")
            return self.error_status, _perf(), 0
        return 200, _perf(), 0

    def describe(self) -> dict:
        return {"target": "synthetic", **self.params}

    async def aclose(self) -> None:
        pass


def _corpus_summary(c: Corpus) -> dict:
    d = c.describe()
    return {"source": d["source"], "weights": d["weights"], "files": d["files"], "bytes": d["bytes"],
            "hostile_share": d["hostile_share"]}


def build(plan):
    """The plan's target (not yet set up: `await target.setup()` before the first request)."""
    kind = getattr(plan, "target", None)
    if kind == "page":
        return PageTarget(plan)
    if kind == "synthetic":
        return SyntheticTarget(plan)
    if kind in ("render-api", "pool"):
        corpus = Corpus.load(getattr(plan, "corpus", None), getattr(plan, "sizes", None) or None,
                             getattr(plan, "hostile_share", 0.0) or 0.0, int(getattr(plan, "seed", 0) or 0))
        return RenderApiTarget(plan, corpus) if kind == "render-api" else PoolTarget(plan, corpus)
    raise UsageError(f"unknown target {kind!r}", hint="targets: page, render-api, pool, synthetic")


__all__ = ["Doc", "Req", "TransportError", "build", "mix"]
