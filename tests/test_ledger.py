"""The run ledger: chain vector, seal, and the tamper matrix against a real tenant git repo."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.conftest import run_wbx
from workbooks.errors import BadRequest, NotFound, VerificationFailed
from workbooks.gitstore import GitStore
from workbooks.ledger import LEDGER_FILE, STEPS_FILE, append_step, chain, genesis_hash, identity_from_seed
from workbooks.ledger.api import ledger_report
from workbooks.ledger.seal import checkpoint_path, ok, seal, verify

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    store = GitStore(data, "dev")
    ident = identity_from_seed("dev", SEED)
    run = store.path / "runs" / "r1"
    run.mkdir(parents=True)
    return data, store, ident, run


def write_steps(run, n=5):
    for i in range(n):
        append_step(run, {"step": i, "tool": "shell" if i < n - 1 else "done", "out": f"result {i}"})


def lines_of(run) -> list[bytes]:
    return (run / STEPS_FILE).read_bytes().split(b"\n")[:-1]


def set_lines(run, lines: list[bytes]) -> None:
    (run / STEPS_FILE).write_bytes(b"".join(l + b"\n" for l in lines))


def check(run, store, ident, **kw) -> dict:
    return verify(run, store, expected_did=ident.did, **kw)


def test_chain_vector_from_the_issue():
    h0 = hashlib.sha256(b"workbooks-ledger-v1").hexdigest()
    assert genesis_hash() == h0
    hs = chain([b'{"step":0,"tool":"shell"}', b'{"step":1,"tool":"done"}'])
    assert hs[0].startswith("7cca1c5d") and hs[0].endswith("f3df")
    assert hs[1].startswith("fedc5f32") and hs[1].endswith("3f22")
    assert hs == [
        "7cca1c5d2425d3dde6cbcb1064b58818d7d9275123b7eaf50cfb48a5b67af3df",
        "fedc5f321e2788537f4fd4e491314e599107723e1a44dcd81fe702b628603f22",
    ]


def test_seal_writes_ledger_and_commits_a_signed_checkpoint(env):
    data, store, ident, run = env
    (run / STEPS_FILE).write_bytes(b'{"step":0,"tool":"shell"}\n\n{"step":1,"tool":"done"}\n')  # empty line dropped
    res = seal(run, store, ident, now=1_700_000_000)
    led = json.loads((run / LEDGER_FILE).read_text())
    assert set(led) == {"v", "did", "count", "head", "sig", "ts"}
    assert led["v"] == 1 and led["count"] == 2 and led["did"] == ident.did and led["ts"] == 1_700_000_000
    assert led["head"] == "fedc5f321e2788537f4fd4e491314e599107723e1a44dcd81fe702b628603f22"
    assert store.log()[0]["msg"] == "ledger-r1" and res["checkpoint"] == store.head()
    cp = json.loads(store.read_file(checkpoint_path("r1")))
    assert cp["origin"] == ident.did and cp["count"] == 2 and cp["head"] == led["head"] and cp["prev"] is None
    assert STEPS_FILE not in " ".join(store.ls_files()) and LEDGER_FILE not in " ".join(store.ls_files())
    v = check(run, store, ident)
    assert ok(v) and v["anchored"] and v["count"] == 2 and v["head"] == led["head"] and v["reason"] is None


@pytest.mark.parametrize(
    "mutate, bad_line, words",
    [
        ("edit", 3, "does not match"),
        ("insert", 2, "does not match"),
        ("delete", 4, "does not match"),
        ("swap", 2, "does not match"),
        ("truncate", 4, "missing"),
        ("append", 6, "appended after seal"),
    ],
)
def test_tamper_matrix_names_the_first_bad_line(env, mutate, bad_line, words):
    data, store, ident, run = env
    write_steps(run, 5)
    seal(run, store, ident)
    ls = lines_of(run)
    if mutate == "edit":
        ls[2] = ls[2].replace(b"result 2", b"result 9")
    elif mutate == "insert":
        ls.insert(1, b'{"step":"injected"}')
    elif mutate == "delete":
        del ls[3]
    elif mutate == "swap":
        ls[1], ls[2] = ls[2], ls[1]
    elif mutate == "truncate":
        ls = ls[:3]
    elif mutate == "append":
        ls.append(b'{"step":5,"tool":"late"}')
    set_lines(run, ls)
    v = check(run, store, ident)
    assert not v["tamper_evident"] and not ok(v)
    assert v["first_bad_line"] == bad_line, v
    assert v["reason"].startswith(f"line {bad_line}:") and words in v["reason"]


def test_missing_seal(env):
    data, store, ident, run = env
    write_steps(run, 2)
    v = check(run, store, ident)
    assert not v["tamper_evident"] and not v["attributable"] and "missing seal" in v["reason"]
    seal(run, store, ident)
    (run / LEDGER_FILE).unlink()
    assert "missing seal" in check(run, store, ident)["reason"]


def test_foreign_did_is_not_attributable(env):
    data, store, ident, run = env
    write_steps(run, 3)
    seal(run, store, ident)
    mallory = identity_from_seed("dev", OTHER_SEED)
    # Mallory re-signs the same head with her own key and writes the seal by hand
    led = json.loads((run / LEDGER_FILE).read_text())
    led.update(did=mallory.did, sig=mallory.sign(led["head"].encode()).hex())
    (run / LEDGER_FILE).write_text(json.dumps(led))
    v = check(run, store, ident)
    assert v["tamper_evident"] and not v["attributable"] and v["did"] == mallory.did
    assert "not this tenant's DID" in " ".join(v["problems"]) or "differs from the DID" in " ".join(v["problems"])
    # and a full re-seal through the API with her key is still not the tenant's
    seal(run, store, mallory, force=True)
    v = check(run, store, ident)
    assert not v["attributable"] and "not this tenant's DID" in v["reason"]


def test_forged_signature(env):
    data, store, ident, run = env
    write_steps(run, 3)
    seal(run, store, ident)
    led = json.loads((run / LEDGER_FILE).read_text())
    led["sig"] = ("f" if led["sig"][0] != "f" else "e") + led["sig"][1:]
    (run / LEDGER_FILE).write_text(json.dumps(led))
    v = check(run, store, ident)
    assert v["tamper_evident"] and not v["attributable"] and "forged" in v["reason"]
    led["sig"] = "00"
    (run / LEDGER_FILE).write_text(json.dumps(led))
    assert not check(run, store, ident)["attributable"]


def test_rewritten_log_with_matching_hand_made_seal_is_caught_by_git(env):
    data, store, ident, run = env
    write_steps(run, 4)
    seal(run, store, ident)
    ls = lines_of(run)
    ls[1] = b'{"step":1,"tool":"shell","out":"innocent"}'
    set_lines(run, ls)
    head = chain(ls)[-1]
    led = {"v": 1, "did": ident.did, "count": 4, "head": head, "sig": ident.sign(head.encode()).hex(), "ts": 1}
    (run / LEDGER_FILE).write_text(json.dumps(led))  # the key holder re-seals without git
    v = check(run, store, ident)
    assert not v["tamper_evident"] and v["first_bad_line"] == 2
    assert "git checkpoint" in " ".join(v["problems"]) and "not anchored" in " ".join(v["problems"])


def test_reseal_of_truncated_log_is_refused_and_caught_against_git(env):
    data, store, ident, run = env
    write_steps(run, 5)
    seal(run, store, ident)
    set_lines(run, lines_of(run)[:3])
    with pytest.raises(VerificationFailed, match="rewritten"):
        seal(run, store, ident)
    seal(run, store, ident, force=True)  # what someone holding the key could do anyway
    led = json.loads((run / LEDGER_FILE).read_text())
    assert led["count"] == 3
    v = check(run, store, ident)
    assert not v["tamper_evident"] and v["first_bad_line"] == 4
    assert "git checkpoint" in v["reason"] and "truncated" in v["reason"]
    assert v["checkpoints"] == 2


def test_legitimate_continuation_reseals_with_linked_checkpoints(env):
    data, store, ident, run = env
    write_steps(run, 2)
    seal(run, store, ident)
    append_step(run, {"step": 2, "tool": "more"})
    assert "appended after seal" in check(run, store, ident)["reason"]
    seal(run, store, ident)
    v = check(run, store, ident)
    assert ok(v) and v["count"] == 3 and v["checkpoints"] == 2
    first, second = [json.loads(store.read_file(checkpoint_path("r1"), rev=c["sha"])) for c in reversed(store.log(path=checkpoint_path("r1")))]
    raw_first = store.read_file(checkpoint_path("r1"), rev=store.log(path=checkpoint_path("r1"))[1]["sha"])
    assert second["prev"] == hashlib.sha256(raw_first).hexdigest() and first["prev"] is None


def test_checkpoint_tampering_in_git_is_caught(env):
    data, store, ident, run = env
    write_steps(run, 3)
    seal(run, store, ident)
    cp = json.loads(store.read_file(checkpoint_path("r1")))
    cp["count"] = 2
    cp["lines"] = cp["lines"][:2]
    cp["head"] = chain(lines_of(run)[:2])[-1]
    store.commit_file(checkpoint_path("r1"), json.dumps(cp).encode(), "edit checkpoint")
    v = check(run, store, ident)
    assert not v["tamper_evident"]
    assert any("invalid signature" in p or "does not link" in p for p in v["problems"])
    store.delete_file(checkpoint_path("r1"), "hide the evidence")
    v = check(run, store, ident)
    assert not v["tamper_evident"] and any("deleted" in p for p in v["problems"])


def test_crlf_lines_are_chained_raw(env):
    data, store, ident, run = env
    (run / STEPS_FILE).write_bytes(b'{"step":0}\r\n{"step":1}\r\n')
    seal(run, store, ident)
    led = json.loads((run / LEDGER_FILE).read_text())
    assert led["head"] == chain([b'{"step":0}\r', b'{"step":1}\r'])[-1] != chain([b'{"step":0}', b'{"step":1}'])[-1]
    assert ok(check(run, store, ident))
    (run / STEPS_FILE).write_bytes(b'{"step":0}\n{"step":1}\n')  # "normalising" line endings is tampering
    v = check(run, store, ident)
    assert not v["tamper_evident"] and v["first_bad_line"] == 1


def test_non_utf8_bytes_are_chained_raw(env):
    data, store, ident, run = env
    raw = b'{"step":0,"out":"\xff\xfe\x80"}\n{"step":1,"bin":"\xc3\x28"}\n{"step":2}\n'
    (run / STEPS_FILE).write_bytes(raw)
    seal(run, store, ident)
    assert ok(check(run, store, ident))
    (run / STEPS_FILE).write_bytes(raw.replace(b"\xc3\x28", b"\xc3\x29"))
    v = check(run, store, ident)
    assert not v["tamper_evident"] and v["first_bad_line"] == 2


APPENDER = textwrap.dedent(
    """
    import sys
    from workbooks.ledger import append_step
    run, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        append_step(run, {"who": who, "i": i, "pad": "x" * (i * 37 % 3000)})
    """
)


def test_concurrent_appends_never_interleave(env):
    data, store, ident, run = env
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(run), f"p{k}", str(n)]) for k in range(2)]

    def worker(k):
        for i in range(n):
            append_step(run, {"who": f"t{k}", "i": i, "pad": "y" * (i * 53 % 3000)})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=60) == 0
    records = [json.loads(l) for l in lines_of(run)]
    assert len(records) == 5 * n
    for who in ("p0", "p1", "t0", "t1", "t2"):
        assert [r["i"] for r in records if r["who"] == who] == list(range(n))
    seal(run, store, ident)
    assert ok(check(run, store, ident))


def test_append_rejects_multiline_and_repairs_torn_tail(env):
    data, store, ident, run = env
    with pytest.raises(BadRequest):
        append_step(run, b"two\nlines")
    (run / STEPS_FILE).write_bytes(b'{"step":0}\n{"torn"')
    append_step(run, {"step": 1})
    assert lines_of(run) == [b'{"step":0}', b'{"torn"', b'{"step":1}']


def test_bad_run_names_and_missing_runs(env, tmp_path):
    data, store, ident, run = env
    for bad in ("../x", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(BadRequest):
            ledger_report(data, "dev", bad)
    with pytest.raises(NotFound):
        ledger_report(data, "dev", "nope")
    with pytest.raises(NotFound):
        seal(run, store, ident)  # no _steps.jsonl yet


def test_ledger_report_for_the_control_plane(env, monkeypatch):
    data, store, ident, run = env
    monkeypatch.setenv("WB_SIGNING_KEY", SEED.hex())
    monkeypatch.setenv("WB_PRIMARY_TENANT", "dev")
    write_steps(run, 3)
    seal(run, store, ident)
    rep = ledger_report(data, "dev", "r1")
    assert ok(rep) and rep["count"] == 3 and rep["did"] == ident.did


def test_cli_ledger_seal_and_verify(tmp_path):
    data = tmp_path / "data"
    env = {"WB_DATA": str(data), "WB_SIGNING_KEY": SEED.hex(), "WB_PRIMARY_TENANT": "dev"}
    run = data / "dev" / "runs" / "r7"
    run.mkdir(parents=True)
    (run / STEPS_FILE).write_bytes(b'{"step":0,"tool":"shell"}\n{"step":1,"tool":"done"}\n')
    p = run_wbx("ledger", "seal", str(run), env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["head"].startswith("fedc5f32")
    p = run_wbx("ledger", "verify", "r7", "--json", env=env)
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)["data"]
    assert {"tamper_evident", "attributable", "did", "count", "head"} <= set(body)
    assert body["tamper_evident"] is True and body["attributable"] is True and body["count"] == 2
    (run / STEPS_FILE).write_bytes(b'{"step":0,"tool":"shell"}\n{"step":1,"tool":"rm -rf"}\n')
    p = run_wbx("ledger", "verify", str(run), env=env)
    assert p.returncode == 5
    body = json.loads(p.stdout)
    assert body["tamper_evident"] is False and body["first_bad_line"] == 2 and "line 2" in body["reason"]
    p = run_wbx("ledger", "verify", "r7", "--json", env=env)
    assert p.returncode == 5
    envelope = json.loads(p.stdout)
    assert envelope["ok"] is False and envelope["data"]["first_bad_line"] == 2
    p = run_wbx("ledger", "verify", "no-such-run", env=env)
    assert p.returncode == 4


def test_ledger_http_entry_point(env, monkeypatch):
    from workbooks.ledger import ledger_http

    data, store, ident, run = env
    monkeypatch.setenv("WB_SIGNING_KEY", SEED.hex())
    monkeypatch.setenv("WB_PRIMARY_TENANT", "dev")
    write_steps(run, 2)
    seal(run, store, ident)
    assert ok(ledger_http(data, "dev", "r1"))
    set_lines(run, lines_of(run)[:1])
    rep = ledger_http(data, "dev", "r1")
    assert rep["tamper_evident"] is False and rep["first_bad_line"] == 2
