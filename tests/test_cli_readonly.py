"""Reading never creates: read-only verbs in a place without a data dir (or for a tenant that
does not exist) exit 4 with a hint and leave no directory and no key behind; `wbx init` creates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

READ_ONLY = [("whoami",), ("repo", "log"), ("repo", "diff"), ("repo", "oplog"), ("ledger", "verify", "r1")]
# verbs that work on a tenant's existing history: they do not make a tenant either
ON_HISTORY = [("mirror", "file:///nonexistent/remote.git"), ("federate",), ("repo", "commit", "msg"), ("repo", "reconcile")]


def wbx(cwd, *args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WB_", "WBX_"))}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "workbooks", *args], cwd=cwd, capture_output=True, env=e, timeout=60)


def tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_read_only_verbs_without_a_data_dir_exit_4_and_create_nothing(tmp_path):
    for args in READ_ONLY + ON_HISTORY:
        r = wbx(tmp_path, "--json", *args)
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        err = json.loads(r.stdout)["error"]
        assert err["code"] == 4 and err["kind"] == "not_found" and "no data dir" in err["message"], err
        assert "wbx init" in err["hint"] and "--data" in err["hint"]  # how to create one, or point at one
        assert tree(tmp_path) == [], args  # no ./wb-data, no key
    r = wbx(tmp_path, "whoami")  # human-ish (agent) mode: the same code
    assert r.returncode == 4 and tree(tmp_path) == []


def test_an_unknown_tenant_is_exit_4_and_gets_no_key(tmp_path):
    assert wbx(tmp_path, "init").returncode == 0  # ./wb-data with tenant dev
    before = tree(tmp_path)
    assert "wb-data/.workbooks/dev.ed25519" in before and "wb-data/dev/.git" in before
    for args in READ_ONLY + ON_HISTORY:
        r = wbx(tmp_path, "--json", *args, "--tenant", "nosuch")
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        err = json.loads(r.stdout)["error"]
        assert "nosuch" in err["message"] and "wbx init --tenant nosuch" in err["hint"], err
    assert tree(tmp_path) == before  # nothing created for nosuch


def test_init_then_read_only_verbs_work(tmp_path):
    data = tmp_path / "d"
    env = {"WB_DATA": str(data)}
    r = wbx(tmp_path, "init", "--tenant", "acme", env=env)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["created_data_dir"] is True and made["did"].startswith("did:key:z6Mk")
    key = data / ".workbooks" / "acme.ed25519"
    assert key.stat().st_size == 32 and (key.stat().st_mode & 0o777) == 0o600
    r = wbx(tmp_path, "whoami", "--tenant", "acme", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["did"] == made["did"]
    r = wbx(tmp_path, "repo", "log", "--tenant", "acme", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    again = wbx(tmp_path, "init", "--tenant", "acme", env=env)  # idempotent: same key
    assert again.returncode == 0 and json.loads(again.stdout)["did"] == made["did"]
    assert json.loads(again.stdout)["created_data_dir"] is False


def test_a_tenant_the_control_plane_registered_exists(tmp_path):
    """A tenant created through the control plane (a row in its index) is found, read-only."""
    from workbooks.store import Store

    data = tmp_path / "d"
    store = Store(data)
    store.create_tenant("viaapi")
    store.close()
    env = {"WB_DATA": str(data)}
    before = tree(data)
    r = wbx(tmp_path, "--json", "repo", "log", "--tenant", "viaapi", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["data"] == []
    r = wbx(tmp_path, "--json", "whoami", "--tenant", "viaapi", env=env)  # exists, but has no key yet
    assert r.returncode == 4 and "no signing key" in json.loads(r.stdout)["error"]["message"]
    # (sqlite may add its -wal/-shm companions beside the index when reading it: not state)
    assert [p for p in tree(data) if not p.startswith(".workbooks/index.db-")] == before


def test_primary_tenant_from_wb_signing_key_needs_no_data_dir(tmp_path):
    env = {"WB_SIGNING_KEY": "00" * 32, "WB_DATA": str(tmp_path / "none")}
    r = wbx(tmp_path, "whoami", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["key"] == "WB_SIGNING_KEY"
    assert tree(tmp_path) == []
