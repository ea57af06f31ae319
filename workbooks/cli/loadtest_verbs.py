"""`wbx loadtest run|report|compare|generator|corpus`: load-test a Workbooks deployment.

`run` drives an open-model load (every request has an intended start and is timed from it) at a
deployed page, the render API or the pool, writes a run directory (run.json, latency.hlog,
report.html, report.png) and decides the exit code from the plan's thresholds:

    0 every threshold held · 5 one failed (value and limit in run.json) · 1 generator_saturated
    (the numbers are the generator's, not the server's; --allow-saturated accepts them) ·
    2 bad arguments or plan · 3 the target is unreachable

Output follows the rest of wbx: a live view on a terminal, one JSON object per second on a pipe
(then the summary), only the `--json` envelope with `--json`. The API key comes from `--key`,
`$WB_API_KEY` or `$WB_DATA/admin.key`; it is never written to the plan or the run directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from workbooks.cli.output import AGENT, HUMAN, Output
from workbooks.errors import NotFound, UsageError

#: What `--quick` means when the plan/flags do not say otherwise: a short check of a local
#: `wbx serve` (the demo page) that a healthy box passes in well under a minute.
QUICK_STAGES = "3s:0-100,7s:100"
QUICK_THRESHOLDS = ("errors.rate<1%", "rate.achieved>=95%", "latency.p99<1s")
DEFAULT_PAGE_URL = "http://127.0.0.1:4001"
DEFAULT_CONTROL_URL = "http://127.0.0.1:4000"


def _flag_map(ns) -> dict:
    """The command line as plan fields (None = not given, the TOML or the default decides)."""
    ops = None
    if ns.op:
        ops = {}
        for item in ns.op:
            name, _, w = item.partition("=")
            try:
                ops[name.strip()] = float(w) if w else 1.0
            except ValueError:
                raise UsageError(f"--op {item!r}: the weight is not a number",
                                 hint="--op render=3 --op query=1 (render|query|tangle|lint|deploy)") from None
    return {
        "target": ns.target, "url": ns.url, "host": ns.host, "paths": ns.path or None,
        "accept_encoding": ns.accept_encoding, "ops": ops,
        "pool_endpoint": ns.pool_endpoint, "pool_server_key": ns.server_key, "pool_client_key": ns.client_key,
        "rate": ns.rate, "stages": ns.stages, "duration": ns.duration, "arrival": ns.arrival, "seed": ns.seed,
        "model": "closed" if ns.closed else None, "closed_concurrency": ns.concurrency,
        "connections": ns.connections, "max_inflight": ns.max_inflight, "timeout": ns.timeout,
        "procs": ns.procs, "remote": ns.remote, "listen": ns.listen,
        "thresholds": ns.threshold or None, "abort_on_fail": True if ns.abort_on_fail else None,
        "grace": ns.grace, "allow_saturated": True if ns.allow_saturated else None,
        "corpus": ns.corpus, "hostile_share": ns.hostile_share,
        "scrape": False if ns.no_scrape else None, "metrics_url": ns.metrics_url,
        "public_metrics_url": ns.public_metrics_url, "out": ns.out, "name": ns.name,
    }


def _runtime_key(ns) -> str | None:
    """The API key for the render API and /metrics, if there is one (never stored in the plan)."""
    if getattr(ns, "key", None):
        return ns.key
    if os.environ.get("WB_API_KEY"):
        return os.environ["WB_API_KEY"]
    data = Path(getattr(ns, "data", None) or os.environ.get("WB_DATA") or "wb-data")
    try:
        return (data / "admin.key").read_text().strip() or None
    except OSError:
        return None


def _demo_host() -> str:
    from workbooks.web_control.first_run import WORKBOOK  # the demo is served as <workbook>.localhost

    return f"{WORKBOOK}.localhost"


def build(ns):
    """The Plan from PLAN.toml (if any), the flags, and --quick's defaults."""
    from workbooks.loadtest import plan as P

    toml = P.load_toml(ns.plan) if ns.plan else {}
    flags = _flag_map(ns)
    if ns.quick:
        if flags["stages"] is None and flags["rate"] is None and "stages" not in toml and "rate" not in toml:
            flags["stages"] = QUICK_STAGES
        if flags["thresholds"] is None and "thresholds" not in toml:
            flags["thresholds"] = list(QUICK_THRESHOLDS)
    if ns.find_max and flags["stages"] is None and flags["rate"] is None and "stages" not in toml and "rate" not in toml:
        from workbooks.loadtest.findmax import MIN_START

        flags["rate"] = str(MIN_START)  # where the search starts; each step sets its own rate
    target = flags["target"] or toml.get("target") or "page"
    if target == "page":
        if flags["url"] is None and "url" not in toml:
            flags["url"] = DEFAULT_PAGE_URL
        if flags["host"] is None and "host" not in toml and (flags["url"] or toml.get("url")) == DEFAULT_PAGE_URL:
            flags["host"] = _demo_host()
    elif target == "render-api" and flags["url"] is None and "url" not in toml:
        flags["url"] = DEFAULT_CONTROL_URL
    if target == "pool" and flags["pool_endpoint"] is None and "pool_endpoint" not in toml:
        from workbooks.pool import endpoints as E

        flags["pool_endpoint"] = E.client_endpoint(Path(ns.data or os.environ.get("WB_DATA") or "wb-data"))
    plan = P.build_plan(toml, flags)
    if plan.target == "page" and plan.scrape and not plan.public_metrics_url:
        plan.public_metrics_url = plan.url  # the public plane's own figures, beside the control plane's
    plan.runtime_key = _runtime_key(ns)
    return plan


def _unreachable(result: dict):
    """Nothing reached the target: every request failed to connect. That is exit 3, not a verdict."""
    req = result.get("requests") or {}
    by_error = req.get("by_error") or {}
    if req.get("ok") or not req.get("errors") or set(by_error) - {"connect"}:
        return None
    from workbooks.errors import Unreachable

    url = (result.get("plan") or {}).get("url") or (result.get("plan") or {}).get("pool_endpoint")
    return Unreachable(f"no request reached {url}: all {req['errors']} failed to connect",
                       hint="is the service running there? (`wbx serve`, or --url / --pool-endpoint)")


def _out_dir(plan, ns) -> Path:
    if plan.out:
        return Path(plan.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("loadtest-runs") / f"{stamp}-{plan.target}"


def _summary(result: dict, run_dir: Path) -> dict:
    """run.json without the per-second series and spectrum (those are in the file)."""
    out = {k: v for k, v in result.items() if k not in ("series", "spectrum", "plan")}
    out["run_dir"] = str(run_dir)
    return out


def _ms(v) -> str:
    return "-" if v is None else (f"{v / 1000:.2f}s" if v >= 1000 else f"{v:.2f}ms")


def _human_summary(d: dict, st) -> str:
    lat = d.get("latency") or {}
    svc = d.get("service") or {}
    req = d.get("requests") or {}
    rate = d.get("rate") or {}
    lines = []
    code = (d.get("exit") or {}).get("code", 0)
    if d.get("generator_bound"):
        lines.append(st.red("GENERATOR-BOUND: these figures are the generator's, not the server's"))
    if d.get("omits_queueing"):
        lines.append(st.yellow("closed model: latency omits queueing (coordinated omission)"))
    if d.get("aborted"):
        a = d["aborted"]
        lines.append(st.yellow(f"aborted at {a.get('at_s')}s: {a.get('expr')}"))
    lines.append(st.bold(f"{'':10} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>9}"))
    for name, h in (("latency", lat), ("service", svc)):
        lines.append(f"{name:10} " + " ".join(f"{_ms(h.get(k)):>9}" for k in ("p50", "p90", "p99", "p99.9", "max")))
    lines.append(f"requests   {req.get('ok', 0)} ok · {req.get('errors', 0)} errors · {req.get('dropped', 0)} dropped"
                 f" · rate {rate.get('achieved', 0):.1f}/s of {rate.get('target', 0):.1f}/s")
    for t in d.get("thresholds") or []:
        mark = st.green("pass") if t.get("ok") else st.red("FAIL")
        lines.append(f"  {mark}  {t.get('expr')}  (measured {t.get('value')}{t.get('unit') or ''})")
    if d.get("find_max"):
        fm = d["find_max"]
        lines.append(st.bold(f"highest rate with every threshold held: {fm.get('max_rate')}/s"))
    lines.append(st.dim(f"run directory: {d.get('run_dir')}  (report.html)"))
    reason = (d.get("exit") or {}).get("reason")
    if code:
        lines.append(st.red(f"exit {code}: {reason}"))
    return "\n".join(lines)


def _line(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n")
    sys.stdout.flush()


def cmd_run(ns) -> Output:
    from workbooks.loadtest import runner

    plan = build(ns)
    run_dir = _out_dir(plan, ns)
    on_second = (lambda item: _line({"event": "second", **item})) if ns.mode == AGENT else None
    live = None
    if ns.mode == HUMAN and sys.stdout.isatty():
        from workbooks import log as wblog
        from workbooks.loadtest.live import LiveView

        # log lines would tear the live panel: on a terminal they go to the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        wblog.configure("cli", stream=open(run_dir / "runner.log", "a"))
        live = LiveView(plan)
    if ns.find_max:
        from workbooks.loadtest.findmax import find_max

        result = find_max(plan, run_dir, on_second=on_second, live=live,
                          on_step=(lambda s: _line({"event": "step", **s})) if ns.mode == AGENT else None)
    else:
        if live is not None:
            with live:
                result = runner.run(plan, run_dir, on_second=on_second, live=live)
        else:
            result = runner.run(plan, run_dir, on_second=on_second)
    summary = _summary(result, run_dir)
    gone = _unreachable(result)
    if gone is not None:
        raise gone
    return Output(data=summary, human=_human_summary, exit_code=int((result.get("exit") or {}).get("code", 0)))


def _run_json(path: str) -> tuple[dict, Path]:
    p = Path(path)
    f = p / "run.json" if p.is_dir() else p
    try:
        return json.loads(f.read_text()), f.parent
    except FileNotFoundError:
        raise NotFound(f"no run.json at {f}", hint="pass a run directory written by `wbx loadtest run`") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{f} is not a run.json: {e}") from None


def cmd_report(ns) -> Output:
    from workbooks.loadtest import report

    _, run_dir = _run_json(ns.run_dir)
    made = report.build(run_dir)
    data = {"run_dir": str(run_dir), **{k: (str(v) if v is not None else None) for k, v in made.items()}}
    return Output(data=data, human=lambda d, st: "\n".join(f"{k}: {v}" for k, v in d.items()))


def _fraction(text: str) -> float:
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"--max-regression {text!r} is not a number or a percentage", hint="e.g. 10%") from None


def cmd_compare(ns) -> Output:
    from workbooks.loadtest import compare

    base, _ = _run_json(ns.base)
    run, _ = _run_json(ns.run)
    res = compare.compare(base, run, _fraction(ns.max_regression))
    return Output(data=res, human=lambda d, st: compare.format_table(d), exit_code=0 if res.get("ok") else 5)


def cmd_generator(ns) -> Output | None:
    from workbooks.loadtest import generator

    argv = ["--connect", ns.connect]
    if ns.server_key:
        argv += ["--server-key", ns.server_key]
    if ns.client_key:
        argv += ["--client-key", ns.client_key]
    rc = generator.main(argv)
    if rc:
        return Output(data={"exit": rc}, exit_code=rc)
    return None


def cmd_corpus(ns) -> Output:
    from workbooks.loadtest.corpus import Corpus

    if ns.dir and not Path(ns.dir).is_dir():
        raise NotFound(f"no directory {ns.dir}", hint="pass a directory of .org files, or nothing for the shipped corpus")
    c = Corpus.load(ns.dir)

    def human(d, st):
        rows = [st.bold(f"{'class':6} {'files':>6} {'bytes':>10} {'weight':>7}")]
        for name, cl in (d.get("classes") or {}).items():
            rows.append(f"{name:6} {cl.get('files', 0):>6} {cl.get('bytes', 0):>10} {cl.get('weight', 0):>7}")
        return "\n".join(rows)

    return Output(data=c.describe(), human=human)


def register(subs) -> None:
    lt = subs.add_parser("loadtest", help="load-test a deployment: open-model latency, thresholds, a report",
                         description="Load-test renders and pages; see `wbx loadtest run --help`.")
    lsubs = lt.add_subparsers(dest="lt_verb", required=True)

    r = lsubs.add_parser("run", help="run a load (open model) and write a run directory",
                         description="Exit: 0 thresholds held, 5 one failed, 1 generator_saturated, 2 usage, 3 unreachable.")
    r.add_argument("plan", nargs="?", help="a TOML plan (everything the flags hold; see load/plans/)")
    r.add_argument("--target", choices=["page", "render-api", "pool"], help="what to load (default page)")
    r.add_argument("--url", help="base URL (default http://127.0.0.1:4001 for page, :4000 for render-api)")
    r.add_argument("--host", help="Host header for page targets (default: the local demo's)")
    r.add_argument("--path", action="append", help="a page path (repeat; default: the host's /sitemap.xml)")
    r.add_argument("--accept-encoding", help="Accept-Encoding sent with page GETs (default gzip)")
    r.add_argument("--op", action="append", help="render-api op weight, e.g. render=3 (render|query|tangle|lint|deploy)")
    r.add_argument("--pool-endpoint", help="pool client endpoint (ipc://… or tcp://…; default the local serve's)")
    r.add_argument("--server-key", help="the pool broker's CURVE public key (Z85) for tcp endpoints")
    r.add_argument("--client-key", help="a CURVE client key file for tcp endpoints")
    r.add_argument("--rate", help="requests per second (a hold for --duration)")
    r.add_argument("--stages", help="DUR:RATE holds and DUR:A-B ramps, e.g. 5s:0-400,30s:400")
    r.add_argument("--duration", help="with --rate: how long (default 10s)")
    r.add_argument("--arrival", choices=["uniform", "poisson"], help="arrival law (default uniform)")
    r.add_argument("--seed", type=int, help="seed for Poisson arrivals and payload picks")
    r.add_argument("--threshold", action="append", help="e.g. 'latency.p99<50ms' (repeat; sets the exit code)")
    r.add_argument("--abort-on-fail", action="store_true", help="stop within 2 s of a breach (after --grace)")
    r.add_argument("--grace", help="seconds before --abort-on-fail may stop the run (default 5s)")
    r.add_argument("--allow-saturated", action="store_true", help="exit 0 even when the generator was the bottleneck")
    r.add_argument("--procs", type=int, help="local generator processes (default 1)")
    r.add_argument("--remote", type=int, help="remote generators (`wbx loadtest generator`) to wait for")
    r.add_argument("--listen", help="tcp endpoint remote generators join (CURVE), e.g. tcp://0.0.0.0:5590")
    r.add_argument("--connections", type=int, help="keep-alive connections per process (0 = unlimited)")
    r.add_argument("--max-inflight", type=int, help="in-flight requests per process beyond which arrivals are dropped")
    r.add_argument("--timeout", help="per-request timeout (default 30s)")
    r.add_argument("--closed", action="store_true", help="closed model (N loops; the report says it omits queueing)")
    r.add_argument("--concurrency", type=int, help="with --closed: the number of loops")
    r.add_argument("--corpus", help="a directory of .org payloads (default: the shipped corpus)")
    r.add_argument("--hostile-share", type=float, help="share of hostile documents among payloads (0..1)")
    r.add_argument("--no-scrape", action="store_true", help="do not read the server's /metrics")
    r.add_argument("--metrics-url", help="control plane base URL for /metrics")
    r.add_argument("--public-metrics-url", help="public plane base URL for /metrics")
    r.add_argument("--find-max", action="store_true", help="raise the rate until a threshold breaks, then bisect")
    r.add_argument("--quick", action="store_true", help="a short check of a local wbx serve (<60 s)")
    r.add_argument("--out", help="run directory (default loadtest-runs/<time>-<target>)")
    r.add_argument("--name", help="a name for the run (shown in the report)")
    r.add_argument("--key", help="API key (default $WB_API_KEY or $WB_DATA/admin.key)")
    r.add_argument("--data", help="data dir holding admin.key and the pool socket (default $WB_DATA or ./wb-data)")
    r.set_defaults(func=cmd_run)

    rp = lsubs.add_parser("report", help="rebuild report.html (and report.png) from a run directory")
    rp.add_argument("run_dir")
    rp.set_defaults(func=cmd_report)

    c = lsubs.add_parser("compare", help="compare a run with a baseline; exit 5 on a regression")
    c.add_argument("base")
    c.add_argument("run")
    c.add_argument("--max-regression", default="10%", help="allowed worsening (default 10%%)")
    c.set_defaults(func=cmd_compare)

    g = lsubs.add_parser("generator", help="a remote generator: join a coordinator over ZeroMQ (CURVE on tcp)")
    g.add_argument("--connect", required=True, help="the coordinator's endpoint (tcp://host:port)")
    g.add_argument("--server-key", help="the coordinator's CURVE public key (Z85)")
    g.add_argument("--client-key", help="this generator's CURVE key file")
    g.set_defaults(func=cmd_generator)

    cp = lsubs.add_parser("corpus", help="the payload corpus: size classes, files, bytes, weights")
    cp.add_argument("dir", nargs="?", help="a directory of .org files (default: the shipped corpus)")
    cp.set_defaults(func=cmd_corpus)
