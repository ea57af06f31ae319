"""The web planes as supervisor children (appended to the pool's by `workbooks.serve.web_children`).

Each plane is N independent processes on one port (SO_REUSEPORT), each its own child, so one
crashing is restarted alone while the others keep serving; `web_templates` lets `scale` grow or
shrink a plane, and a restart starts the replacement first (it joins the port, then the old
process stops), so restarting a plane process drops no connection. A temporary `first-run` child waits
for the control plane, creates tenant `dev`, deploys the demo workbook once and prints where
to look.
"""

from __future__ import annotations

import os
import sys

WEB_GROUPS = ("control", "public")
DEFAULT_CONTROL = "127.0.0.1:4000"
DEFAULT_PUBLIC = "127.0.0.1:4001"


def split_addr(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host:
        return addr or "127.0.0.1", default_port
    return host.strip("[]"), int(port)


def settings(cfg) -> dict:
    def pick(attr: str, env: str, default):
        v = getattr(cfg, attr, None)
        if v is None:
            v = os.environ.get(env)
        return default if v in (None, "") else v

    return {
        "control_procs": max(1, int(pick("control_procs", "WB_CONTROL_PROCS", 1))),
        "public_procs": max(1, int(pick("public_procs", "WB_PUBLIC_PROCS", 1))),
        "control": split_addr(str(pick("control_addr", "WB_CONTROL_ADDR", DEFAULT_CONTROL)), 4000),
        "public": split_addr(str(pick("public_addr", "WB_PUBLIC_ADDR", DEFAULT_PUBLIC)), 4001),
        "first_run": str(pick("first_run", "WB_FIRST_RUN", "1")) not in ("0", "false", "no"),
        "agents": str(pick("agents", "WB_AGENTS", "1")) not in ("0", "false", "no"),
    }


def _plane_spec(cfg, s: dict, group: str, child_id: str):
    """One plane process as a ChildSpec (also the supervisor's template for `scale`)."""
    from workbooks.pool import endpoints as E
    from workbooks.supervisor import ChildSpec

    data = str(cfg.data)
    proc = child_id.rsplit("-", 1)[-1]
    if group == "control":
        host, port = s["control"]
        argv = [sys.executable, "-m", "workbooks.web_control", "--host", host, "--port", str(port),
                "--data-dir", data, "--proc", proc, "--pool", E.client_endpoint(cfg.data),
                "--supervisor", cfg.control_endpoint]
    else:
        host, port = s["public"]
        argv = [sys.executable, "-m", "workbooks.web_public", "--host", host, "--port", str(port),
                "--data-dir", data, "--proc", proc]
    return ChildSpec(id=child_id, group=group, restart="permanent", shutdown=6000, ready_timeout_ms=30_000,
                     env={"WB_DATA": data}, argv=argv)


def agents_spec(cfg):
    """The agents process (workbooks.agent.runner): every agent run happens there, a client of the
    pool like the planes; restarted alone when it dies (runs it had are marked interrupted)."""
    from workbooks.pool import endpoints as E
    from workbooks.supervisor import ChildSpec

    data = str(cfg.data)
    return ChildSpec(id="agents", restart="permanent", shutdown=10_000, ready_timeout_ms=30_000,
                     env={"WB_DATA": data},
                     argv=[sys.executable, "-m", "workbooks.agent.runner", "--data", data,
                           "--pool", E.client_endpoint(cfg.data)])


def scheduler_spec(cfg):
    """The scheduler (workbooks.workflow.scheduler): fires scheduled workflows through the agents process."""
    from workbooks.supervisor import ChildSpec

    data = str(cfg.data)
    return ChildSpec(id="scheduler", restart="permanent", shutdown=5000, ready_timeout_ms=30_000,
                     env={"WB_DATA": data},
                     argv=[sys.executable, "-m", "workbooks.workflow.scheduler", "--data", data])


def telemetry_spec(cfg):
    """The run indexer (workbooks.telemetry): run folders into telemetry.db as they are written."""
    from workbooks.supervisor import ChildSpec

    data = str(cfg.data)
    return ChildSpec(id="telemetry", restart="permanent", shutdown=5000, ready_timeout_ms=30_000,
                     env={"WB_DATA": data}, argv=[sys.executable, "-m", "workbooks.telemetry", "--data", data])


def web_templates(cfg) -> dict:
    """Templates for `scale {group: control|public, n}`: the planes grow and shrink on their port."""
    if not getattr(cfg, "web", True):
        return {}
    s = settings(cfg)
    return {g: (lambda child_id, g=g: _plane_spec(cfg, s, g, child_id)) for g in WEB_GROUPS}


def web_children(cfg) -> list:
    from workbooks.supervisor import ChildSpec

    s = settings(cfg)
    data = str(cfg.data)
    specs = [agents_spec(cfg), scheduler_spec(cfg), telemetry_spec(cfg)] if s["agents"] else []
    specs += [_plane_spec(cfg, s, "control", f"control-{i}") for i in range(1, s["control_procs"] + 1)]
    specs += [_plane_spec(cfg, s, "public", f"public-{i}") for i in range(1, s["public_procs"] + 1)]
    if s["first_run"]:
        (chost, cport), (_, pport) = s["control"], s["public"]
        specs.append(ChildSpec(
            id="first-run", restart="temporary", shutdown=2000, env={"WB_DATA": data},
            argv=[sys.executable, "-m", "workbooks.web_control.first_run", "--data-dir", data,
                  "--control", f"http://{_urlhost(chost)}:{cport}", "--public-port", str(pport)],
        ))
    return specs


def _urlhost(h: str) -> str:
    if h in ("0.0.0.0", ""):
        return "127.0.0.1"
    if h == "::":
        return "[::1]"
    return f"[{h}]" if ":" in h else h
