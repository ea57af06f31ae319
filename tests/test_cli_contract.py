"""The wbx contract: modes, envelope, global flags anywhere, exit codes, help tree, status page."""

from __future__ import annotations

import hashlib
import json

from conftest import run_wbx, run_wbx_on_tty
from workbooks.oql import WASM_PATH

DOC = b"* hello :tag1:\n** TODO child\nSCHEDULED: <2026-06-15 +1w>\n"


def test_agent_mode_when_stdout_is_not_a_tty():
    r = run_wbx("query", "-", input=DOC)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert isinstance(rows, list)  # raw JSON, no envelope


def test_json_envelope_embeds_data_as_structure_and_flags_work_anywhere():
    a = run_wbx("query", "-", "--json", input=DOC)
    b = run_wbx("--json", "query", "-", input=DOC)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    env = json.loads(a.stdout)
    assert env["ok"] is True and env["verb"] == "query"
    assert isinstance(env["data"], list)  # structure, never an escaped string
    assert env["data"] == json.loads(run_wbx("query", "-", input=DOC).stdout)


def test_agent_flag_and_env_force_raw_json():
    for args, env in ((("--agent", "lint", "-"), None), (("lint", "-"), {"WBX_AGENT": "1"})):
        r = run_wbx(*args, input=DOC, env=env)
        assert r.returncode == 0
        assert isinstance(json.loads(r.stdout), list)


def test_missing_file_is_exit_4_with_typed_error_envelope():
    r = run_wbx("query", "/no/such/file.org")
    assert r.returncode == 4
    assert b"No such file or directory" in r.stderr
    r = run_wbx("--json", "tangle", "/no/such/file.org")
    assert r.returncode == 4
    env = json.loads(r.stdout)
    assert env["ok"] is False and env["verb"] == "tangle"
    assert env["error"]["code"] == 4 and env["error"]["kind"] == "not_found"  # numeric, as the original wbx
    assert set(env["error"]) == {"code", "kind", "message", "hint", "retryable"}


def test_usage_errors_exit_2():
    assert run_wbx("no-such-verb").returncode == 2
    assert run_wbx("query").returncode == 2
    r = run_wbx("--json", "render", "-", "--options", "{not json", input=b"* x")
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"]["code"] == 2
    assert json.loads(r.stdout)["error"]["kind"] == "usage"


def test_invalid_utf8_is_a_clear_error_not_a_crash():
    r = run_wbx("--json", "query", "-", input=b"* a\n\xfe\xff")
    assert r.returncode == 1
    err = json.loads(r.stdout)["error"]
    assert err["code"] == 1 and err["kind"] == "bad_request" and "byte offset 4" in err["message"]


def test_lint_exits_zero_even_with_diagnostics():
    doc = b"* pipe :workflow:\n** step :component:\n#+begin_src js :in nonexistent :out result\nexport function run(x){return x}\n#+end_src\n"
    r = run_wbx("lint", "-", input=doc)
    assert r.returncode == 0
    assert isinstance(json.loads(r.stdout), list)


def test_help_json_is_the_verb_tree():
    r = run_wbx("help", "--json")
    assert r.returncode == 0
    tree = json.loads(r.stdout)["data"]
    for verb in ("query", "tangle", "lint", "render"):
        assert verb in tree["verbs"], verb
    assert "file" in [a["name"] for a in tree["verbs"]["query"]["args"]]
    assert tree["global_flags"] == ["--json", "--agent"]


def test_bare_wbx_prints_status_with_kernel_hash():
    r = run_wbx("--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)["data"]
    assert data["kernel"]["sha256"] == hashlib.sha256(WASM_PATH.read_bytes()).hexdigest()
    assert data["version"]


def test_human_mode_on_a_tty_is_readable_not_json():
    rc, text = run_wbx_on_tty(["query", "-"], DOC)
    assert rc == 0
    assert "hello" in text and ":tag1:" in text
    assert not text.lstrip().startswith("[")
    rc, text = run_wbx_on_tty(["query", "/no/such.org"], b"")
    assert rc == 4
    assert "wbx:" in text and "hint:" in text


def test_setupfile_keywords_apply_but_its_headlines_do_not(tmp_path):
    (tmp_path / "setup.org").write_text("#+TODO: REVIEW | DONE\n* a headline of the setup file\n")
    doc = tmp_path / "doc.org"
    doc.write_text("#+SETUPFILE: setup.org\n* REVIEW thing\n* TODO other\n")
    rows = json.loads(run_wbx("query", str(doc)).stdout)
    assert [(r["state"], r["title"]) for r in rows] == [("REVIEW", "thing"), (None, "TODO other")]
    assert rows[0]["line"] == 2  # line numbers are the document's own


def test_setupfile_outside_the_documents_folder_is_not_read(tmp_path):
    outside = tmp_path / "outside.org"
    outside.write_text("#+TODO: LEAK | DONE\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    doc = inner / "doc.org"
    for ref in ("../outside.org", str(outside), "file:///etc/passwd"):
        doc.write_text(f"#+SETUPFILE: {ref}\n* LEAK x\n")
        rows = json.loads(run_wbx("query", str(doc)).stdout)
        assert rows[0]["state"] is None and rows[0]["title"] == "LEAK x", ref


def test_render_reads_includes_beside_the_document_only(tmp_path):
    (tmp_path / "part.org").write_text("* Included heading\nbody text\n")
    secret = tmp_path.parent / f"{tmp_path.name}-secret.org"
    secret.write_text("* SECRET OUTSIDE\n")
    doc = tmp_path / "doc.org"
    doc.write_text(f'#+INCLUDE: "part.org"\n#+INCLUDE: "../{secret.name}"\n')
    r = run_wbx("render", str(doc))
    assert r.returncode == 0, r.stderr
    html = r.stdout.decode()
    assert "Included heading" in html and "body text" in html
    assert "SECRET OUTSIDE" not in html


# -- the failure envelope (issue 10) ------------------------------------------------------------
def test_error_envelope_code_is_the_exit_code_and_kind_the_name():
    cases = [
        (("query", "/nope"), 4, "not_found"),
        (("query",), 2, "usage"),
        (("no-such-verb",), 2, "usage"),
        (("query", "-"), 1, "bad_request"),  # stdin below is not UTF-8
    ]
    for args, code, kind in cases:
        r = run_wbx("--json", *args, input=b"\xff")
        assert r.returncode == code, (args, r.stdout)
        env = json.loads(r.stdout)
        assert env["ok"] is False and env["error"]["code"] == code and env["error"]["kind"] == kind, env
        assert isinstance(env["error"]["message"], str) and env["error"]["message"]
        assert env["error"]["retryable"] is False
        assert env["verb"] == (args[0] if args[0] != "no-such-verb" else "wbx")


def test_empty_hint_is_omitted_not_an_empty_string():
    r = run_wbx("--json", "verify", "-")  # NotFound without a hint
    assert r.returncode == 4
    err = json.loads(r.stdout)["error"]
    assert "hint" not in err and err["message"]
    r = run_wbx("--json", "query", "/nope")
    assert json.loads(r.stdout)["error"]["hint"]  # a real hint stays


def test_agent_mode_writes_the_same_envelope_to_stderr():
    """Piped stdout (agent mode): stdout stays empty (data only), stderr carries the envelope."""
    agent = run_wbx("tangle", "/no/such.org")
    envelope = run_wbx("--json", "tangle", "/no/such.org")
    assert agent.returncode == envelope.returncode == 4
    assert agent.stdout == b"" and envelope.stderr == b""
    assert json.loads(agent.stderr) == json.loads(envelope.stdout)


def test_group_verbs_name_their_subverb():
    r = run_wbx("--json", "repo", "log", "--data", "/nonexistent/wb-data")
    assert r.returncode == 4 and json.loads(r.stdout)["verb"] == "repo log"


def test_invalid_tenant_name_is_a_usage_error(tmp_path):
    env = {"WB_DATA": str(tmp_path / "data")}
    for args in (("whoami",), ("repo", "log"), ("sign", "x.org"), ("key", "list"), ("ledger", "verify", "r1")):
        for bad in ("../x", "A B", "", "a/b", "x" * 64, ".hidden"):
            r = run_wbx("--json", *args, "--tenant", bad, env=env)
            assert r.returncode == 2, (args, bad, r.stdout)
            err = json.loads(r.stdout)["error"]
            assert err["code"] == 2 and err["kind"] == "usage" and "tenant" in err["message"]
    assert not (tmp_path / "data").exists()
    r = run_wbx("whoami", "--tenant", "../x", env=env)  # agent mode: the same, on stderr
    assert r.returncode == 2 and json.loads(r.stderr)["error"]["code"] == 2


def test_tenant_create_with_a_bad_name_is_a_usage_error_before_any_request():
    # no control plane runs at this URL: the name is refused before a request is tried (not exit 3)
    env = {"WB_CONTROL_URL": "http://127.0.0.1:9", "WB_API_KEY": "wbk_x"}
    for bad in ("A B", "../x", "x/y"):
        r = run_wbx("--json", "tenant", "create", bad, env=env)
        assert r.returncode == 2, (bad, r.stdout)
        assert json.loads(r.stdout)["error"]["kind"] == "usage"
    assert run_wbx("tenant", "create", "good-name", env=env).returncode == 3


def test_render_on_a_tty_warns_about_files_it_could_not_read(tmp_path):
    doc = tmp_path / "d.org"
    doc.write_text("* a\n#+INCLUDE: gone.org\n" + "#+INCLUDE: more.org\n" * 150)
    rc, text = run_wbx_on_tty(["render", str(doc)], b"")
    assert rc == 0
    assert "wbx: warning: line 2: #+INCLUDE: gone.org does not exist" in text
    assert "wbx: warning: 51 more lines naming files were not read" in text  # the summary: no line number
