"""First run of `wbx serve`: the primary tenant (`WB_PRIMARY_TENANT`, default `dev`), the demo workbook deployed as `demo`, and where to look.

Idempotent: on later starts it finds both and only prints the URL again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from workbooks.log import configure

WORKBOOK = "demo"


def _req(method: str, url: str, key: str, body: bytes | None = None, tenant: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"}
    if tenant:
        headers["X-Workbooks-Tenant"] = tenant
    if body is not None and method == "POST":
        headers["Content-Type"] = "application/json"
    elif body is not None and method == "PUT":
        headers["Content-Type"] = "text/org"  # a deploy's body is the Org source
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


def wait_ready(control: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(control + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{control} not ready after {timeout:.0f}s")
        time.sleep(0.2)


def wait_public(port: int, timeout: float = 20) -> bool:
    """Until the public plane answers /readyz on loopback (False after `timeout`: it may listen
    on another address; the banner is printed anyway)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.1)
    return False


def first_run(data_dir: Path, control: str, public_port: int, timeout: float = 60) -> dict:
    wait_ready(control, timeout)
    key_path = data_dir / "admin.key"
    key = key_path.read_text().strip()
    # the tenant that owns the short `<workbook>.<base>` names, so the URL printed below serves
    from workbooks.store.hosts import primary_tenant

    TENANT = primary_tenant()
    status, body = _req("POST", control + "/api/tenants", key, json.dumps({"name": TENANT}).encode())
    if status not in (201, 409):
        raise RuntimeError(f"creating tenant {TENANT}: {status} {body}")
    status, body = _req("GET", control + f"/api/workbooks/{WORKBOOK}", key, tenant=TENANT)
    deployed = None
    if status == 404:
        org = resources.files("workbooks.samples").joinpath("demo.org").read_bytes()
        status, body = _req("PUT", control + f"/api/workbooks/{WORKBOOK}", key, org, tenant=TENANT)
        if status != 200:
            raise RuntimeError(f"deploying the demo: {status} {body}")
        deployed = body.get("sha")
    url = f"http://{WORKBOOK}.localhost:{public_port}/"
    return {"url": url, "admin_key_path": str(key_path), "deployed": deployed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workbooks.web_control.first_run")
    p.add_argument("--data-dir", default=os.environ.get("WB_DATA", "wb-data"))
    p.add_argument("--control", default="http://127.0.0.1:4000")
    p.add_argument("--public-port", type=int, default=4001)
    ns = p.parse_args(argv)
    log = configure("first-run")
    try:
        info = first_run(Path(ns.data_dir), ns.control.rstrip("/"), ns.public_port)
    except Exception as e:  # noqa: BLE001
        log.error("first_run_failed", error=str(e))
        return 1
    log.info("first_run_done", **info)
    # Under `wbx serve` the public plane starts only after this (see workbooks.serve.web_children),
    # so it never answers healthy before the demo is there.
    from workbooks.readiness import notify_ready

    if notify_ready():
        wait_public(ns.public_port)  # the public plane starts now: say "up" once it answers
    sys.stderr.write(
        f"\nworkbooks is up.\n  admin key:  {info['admin_key_path']}\n  open:       {info['url']}\n\n"
    )
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
