"""The seed's verified examples (004, "org goes in, JSON comes out") as exact-match tests,
through the real `wbx` entry point in a subprocess and the shipped oql.wasm."""

from __future__ import annotations

import json

from conftest import run_wbx

HELLO_ROW = {"closed": None, "deadline": None, "id": None, "level": 1, "line": 1, "priority": None, "props": {},
             "scheduled": None, "state": None, "tags": ["tag1"], "title": "hello"}

DIGEST = b"""* daily digest :workflow:
  :PROPERTIES:
  :SCHEDULE: 0 7 * * *
  :END:
** fetch :component:
#+begin_src js :uses http :out raw
export async function run() { return fetch_feed(); }
#+end_src
** summarize :component:
#+begin_src js :in raw :out digest
export function run(raw) { return summarize(raw); }
#+end_src
"""

PIPE = b"* pipe :workflow:\n** step :component:\n#+begin_src js :in nonexistent :out result\nexport function run(x){return x}\n#+end_src\n"


def test_query_hello_json_envelope_is_exact():
    r = run_wbx("query", "-", "--json", input=b"* hello :tag1:\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == (
        '{"data":[{"closed":null,"deadline":null,"id":null,"level":1,"line":1,"priority":null,"props":{},'
        '"scheduled":null,"state":null,"tags":["tag1"],"title":"hello"}],"ok":true,"verb":"query"}'
    )


def test_query_agent_mode_prints_the_kernel_json_verbatim():
    r = run_wbx("query", "-", input=b"* hello :tag1:\n** TODO child\nSCHEDULED: <2026-06-15 +1w>\n")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0] == HELLO_ROW
    assert rows[1]["level"] == 2 and rows[1]["state"] == "TODO" and rows[1]["title"] == "child"
    assert rows[1]["scheduled"] == {"active": True, "at": "2026-06-15", "repeat": "+1w"}
    # compact, sorted keys, exactly as the kernel wrote it
    assert r.stdout.decode().startswith('[{"closed":null,"deadline":null,"id":null,"level":1,')


def test_query_open_tasks_like_the_jq_example():
    org = b"* plan\n** TODO write the fetch step\n** DONE wire the schedule\n** TODO add lint gate :ci:\n"
    r = run_wbx("query", "-", input=org)
    assert r.returncode == 0
    assert [h["title"] for h in json.loads(r.stdout) if h["state"] == "TODO"] == ["write the fetch step", "add lint gate"]


def test_tangle_daily_digest_plan():
    r = run_wbx("tangle", "-", input=DIGEST)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    (w,) = plan["worlds"]
    # the jq one-liner from the seed: "daily digest: 2 components, exports digest"
    assert f"{w['name']}: {len(w['components'])} components, exports {','.join(w['exports'])}" == \
        "daily digest: 2 components, exports digest"
    assert w["edges"] == [{"from": "fetch", "to": "summarize"}]
    assert w["imports"] == ["http"]
    assert w["exports"] == ["digest"]
    assert w["schedule"] == {"cron": "0 7 * * *"}
    assert w["workflows"] == []
    out = r.stdout.decode()
    assert '"edges":[{"from":"fetch","to":"summarize"}]' in out
    assert '"imports":["http"]' in out and '"exports":["digest"]' in out
    assert '"schedule":{"cron":"0 7 * * *"}' in out
    fetch = w["components"][0]
    assert fetch == {"deps": [], "dir": None, "in": None, "lang": "js", "name": "fetch", "out": "raw", "persist": False,
                     "src": "export async function run() { return fetch_feed(); }", "uses": ["http"]}


def test_lint_reports_dangling_input_and_exits_zero():
    r = run_wbx("lint", "-", input=PIPE)
    assert r.returncode == 0
    assert r.stdout.decode().strip() == '[{"level":"error","line":2,"message":"input `nonexistent` has no upstream producer","scope":"step"}]'


def test_lint_json_envelope_embeds_diagnostics_as_structure():
    r = run_wbx("--json", "lint", "-", input=PIPE)
    assert r.returncode == 0
    env = json.loads(r.stdout)
    assert env == {"ok": True, "verb": "lint", "data": [
        {"level": "error", "line": 2, "message": "input `nonexistent` has no upstream producer", "scope": "step"}]}


def test_lint_of_a_clean_workbook_is_empty():
    r = run_wbx("lint", "-", input=DIGEST)
    assert (r.returncode, r.stdout.decode().strip()) == (0, "[]")


def test_missing_file_is_exit_4_not_a_lint_result(tmp_path):
    r = run_wbx("lint", str(tmp_path / "nope.org"))
    assert r.returncode == 4
    assert r.stdout.strip() == b"" or b"not_found" in r.stdout


def test_query_reads_a_file_path_too(tmp_path):
    p = tmp_path / "w.org"
    p.write_bytes(b"* hello :tag1:\n")
    r = run_wbx("query", str(p))
    assert r.returncode == 0
    assert json.loads(r.stdout) == [HELLO_ROW]
