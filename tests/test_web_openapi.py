"""/openapi.json matches the control plane's routes, and schemathesis finds no 500 against a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def _routes(tmp_path) -> set[tuple[str, str]]:
    from workbooks.web_control.app import create_app

    app = create_app(tmp_path)
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for m in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, m.lower()))
    return out


def test_document_matches_routes(tmp_path, web):
    doc = web.http.get(web.control + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert documented == _routes(tmp_path)
    # every operation documents its errors and its security
    for p, ops in doc["paths"].items():
        for m, o in ops.items():
            assert o["responses"], (p, m)
            if p not in ("/healthz", "/readyz", "/openapi.json"):
                assert "401" in o["responses"], (p, m)


HOOKS = """
import schemathesis


@schemathesis.check
def no_internal_server_error(ctx, response, case):
    if response.status_code == 500:
        raise AssertionError(f"500 from {case.method} {case.path}: {response.text[:300]}")
"""


def test_schemathesis_finds_no_server_error(web, tmp_path):
    # the CLI of the schemathesis installed with this interpreter (the test extra), whatever PATH says
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        pytest.fail("schemathesis is not installed: `make test` installs the test extra")
    st = [sys.executable, "-m", "schemathesis.cli"]
    tenant, _ = web.new_tenant("fuzz")
    # "no 500": a 503 (no supervisor here, an overloaded pool) is an answer, not a crash
    (tmp_path / "wb_st_hooks.py").write_text(HOOKS)
    env = dict(os.environ, SCHEMATHESIS_HOOKS="wb_st_hooks", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [*st, "run", web.control + "/openapi.json", "--checks", "no_internal_server_error",
         "-H", f"Authorization: Bearer {web.admin_key}", "-H", f"X-Workbooks-Tenant: {tenant}",
         "--max-examples", "12", "--request-timeout", "20", "--generation-deterministic",
         "--phases", "examples,fuzzing", "--exclude-path", "/api/mirror/{tenant}",
         "--exclude-path", "/api/ops/scale", "--exclude-path", "/api/ops/workers/{id}/restart",
         "--exclude-path", "/api/keys/{id}", "--suppress-health-check", "all"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "generated" in out, out[-3000:]
    # the server is healthy after the fuzzing and logged no unhandled exception
    assert web.http.get(web.control + "/healthz").status_code == 200
    assert "unhandled_exception" not in web.planes.logs()
