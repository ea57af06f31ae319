"""`wbx workflow plan|run` end to end, as a subprocess: JSON out, exit codes, `-` for stdin."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_wbx

SAMPLES = Path(__file__).resolve().parent.parent / "workbooks" / "samples"


def envelope_error(p) -> dict:
    return json.loads(p.stderr.decode().strip().splitlines()[-1])["error"]


def test_plan_prints_plan_records():
    p = run_wbx("workflow", "plan", str(SAMPLES / "demo.org"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"workflow": "daily digest", "schedule": {"cron": "0 7 * * *"},
                                     "tasks": ["fetch", "summarize"], "sub_workflows": []}]


def test_plan_from_stdin_with_an_include(tmp_path):
    (tmp_path / "steps.org").write_text("** b :component:\n#+begin_src js :in x\nexport function run(x){return x}\n"
                                        "#+end_src\n")
    org = b"* w :workflow:\n** a :component:\n#+begin_src js :out x\nexport function run(){return 1}\n#+end_src\n" \
          b"#+INCLUDE: \"steps.org\"\n"
    (tmp_path / "w.org").write_bytes(org)
    p = run_wbx("workflow", "plan", str(tmp_path / "w.org"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["tasks"] == ["a", "b"]
    p = run_wbx("workflow", "plan", "-", input=b"* w :workflow:\n** only :component:\n")
    assert p.returncode == 0 and json.loads(p.stdout)[0]["tasks"] == ["only"]
    p = run_wbx("--json", "workflow", "plan", "-", input=b"no workflows here\n")
    assert json.loads(p.stdout) == {"ok": True, "verb": "workflow plan", "data": []}


def test_plan_missing_file_is_not_found(tmp_path):
    p = run_wbx("workflow", "plan", str(tmp_path / "nope.org"))
    assert p.returncode == 4 and envelope_error(p)["kind"] == "not_found"


CYCLE = b"""* loop :workflow:
** a :component:
#+begin_src js :in y :out x
export function run(x){return x}
#+end_src
** b :component:
#+begin_src js :in x :out y
export function run(x){return x}
#+end_src
"""

MISSING = b"""* w :workflow:
** a :component:
#+begin_src js :in nowhere
export function run(x){return x}
#+end_src
"""

TWO = b"* one :workflow:\n** a :component:\n* two :workflow:\n** b :component:\n"


def test_run_refuses_a_plan_that_cannot_run(tmp_path):
    out = tmp_path / "out"
    p = run_wbx("workflow", "run", "-", "--out", str(out), input=CYCLE)
    assert p.returncode == 2 and p.stdout == b""
    err = envelope_error(p)
    assert err["kind"] == "invalid_workflow" and "cycle" in err["message"] and "a → b → a" in err["message"]
    assert not out.exists()  # nothing was made, nothing ran
    p = run_wbx("workflow", "run", "-", input=MISSING)
    assert p.returncode == 2 and "'nowhere' has no upstream producer" in envelope_error(p)["message"]


def test_run_picks_the_world(tmp_path):
    p = run_wbx("workflow", "run", "-", input=TWO)
    assert p.returncode == 2 and "'one', 'two'" in envelope_error(p)["message"]
    p = run_wbx("workflow", "run", "-", "--world", "three", input=TWO)
    assert p.returncode == 4 and "'three'" in envelope_error(p)["message"]
    p = run_wbx("workflow", "run", "-", input=b"* just prose\n")
    assert p.returncode == 2 and "no :workflow: headline" in envelope_error(p)["message"]


def test_run_never_writes_over_a_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = run_wbx("workflow", "run", "-", "--out", str(out), input=TWO + b"", )
    assert p.returncode == 2  # the world is chosen before any folder is touched
    p = run_wbx("workflow", "run", "-", "--world", "one", "--out", str(out), input=TWO)
    assert p.returncode == 6 and envelope_error(p)["kind"] == "conflict"
    assert sorted(x.name for x in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_run_input_from_stdin_needs_the_workbook_from_a_file(tmp_path):
    p = run_wbx("workflow", "run", "-", "--input", "@-", input=TWO)
    assert p.returncode == 2 and "stdin" in envelope_error(p)["message"]
    p = run_wbx("workflow", "run", str(SAMPLES / "demo.org"), "--input", f"@{tmp_path / 'missing.txt'}")
    assert p.returncode == 4
