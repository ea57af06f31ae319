"""The agent's sandboxed shell, end to end: the real shellbox.wasm and jqjs-in-QuickJS stages under
wasmtime's WASI, on a real working directory. The original's shell table, quoting, variables,
`&& ||`, confined redirections, what a stage can and cannot see, the limits, jq, and speed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from workbooks.agent.secrets import Secrets
from workbooks.agent.shell import run_pipeline
from workbooks.agent.tools import base_tools
from workbooks.agent.tools.base import ToolContext
from workbooks.agent.tools.shell_tool import SHELL

RECORDS = frozenset({"_steps.jsonl", "_status.json", "events.org"})
USERS = '{"users":[{"name":"ada"},{"name":"grace"},{"name":"alan"}]}'


@pytest.fixture
def wd(tmp_path) -> Path:
    d = tmp_path / "wb-runs" / "dev" / "run-1"
    d.mkdir(parents=True)
    (d / "f.txt").write_text("a\nb\nc\n")
    (d / "data.json").write_text(USERS)
    (tmp_path / "secret.txt").write_text("outside the workdir\n")
    return d


def ctx_for(wd: Path, **kw) -> ToolContext:
    kw.setdefault("read_only", RECORDS)
    return ToolContext(tenant="dev", run_id="run-1", data_dir=wd.parent.parent.parent, workdir=wd, **kw)


def sh(wd: Path, pipeline: str, input: str | None = None, **kw):
    return trio.run(run_pipeline, ctx_for(wd, **kw), pipeline, input)


def out(wd: Path, pipeline: str, input: str | None = None) -> str:
    r = sh(wd, pipeline, input)
    return r.output


# -- the original's table (wasm_shell_test.exs, agent.ex's demo) -----------------------------

ORIGINAL = [
    ("seq 5 | head -n 3 | wc -l", "3"),
    ("seq 3 | wc -l", "3"),
    ("echo hello world | upper", "HELLO WORLD"),
    ("echo -n abc | wc -c", "3"),
    ("echo hello | rev", "olleh"),
    ("basename /a/b/c.txt .txt", "c"),
    ("dirname /a/b/c.txt", "/a/b"),
    ("echo hello | tr l L", "heLLo"),
    ("echo a ; echo b", "a\nb"),
    ("cat f.txt", "a\nb\nc"),
    ("cat f.txt | wc -l", "3"),
    ("cat f.txt | grep b", "b"),
]


@pytest.mark.parametrize("pipeline,expected", ORIGINAL)
def test_the_original_shell_table(wd, pipeline, expected):
    r = sh(wd, pipeline)
    assert (r.output, r.exit_code, r.error) == (expected, 0, None)


def test_the_original_jq_demo(wd):
    # demo_shell: `jq .users[].name` and `jq .users[].name | grep a | upper` over the users JSON
    assert out(wd, "jq .users[].name", USERS) == '"ada"\n"grace"\n"alan"'
    assert out(wd, "jq .users[].name | grep a | upper", USERS) == '"ADA"\n"GRACE"\n"ALAN"'


def test_files_by_absolute_path_inside_the_workdir(wd):
    assert out(wd, f"cat {wd}/f.txt | wc -l") == "3"


# -- commands and their flags ----------------------------------------------------------------

FLAGS = [
    ("seq 8 | head -n 2", "1\n2"),
    ("seq 8 | head -3", "1\n2\n3"),
    ("seq 8 | head -c 3", "1\n2"),
    ("seq 8 | tail -n 2", "7\n8"),
    ("seq 8 | tail -2", "7\n8"),
    ("seq 5 | tail -n +4", "4\n5"),
    ("seq 2 4", "2\n3\n4"),
    ("seq 10 -3 1", "10\n7\n4\n1"),
    ("echo 'one two three' | wc -w", "3"),
    ("echo 'one two' | wc -l -w -c", "      1       2       8"),
    ("echo 'b\na\nc' > x; sort x", "a\nb\nc"),
    ("echo -e 'b\na\nc' > x; sort -r x", "c\nb\na"),
    ("echo '10\n9\n100' > x; sort -n x", "9\n10\n100"),
    ("echo '10\n9\n100' > x; sort -rn x", "100\n10\n9"),
    ("echo 'b\na\nb\na' > x; sort -u x", "a\nb"),
    ("echo 'x 3\ny 1\nz 2' > x; sort -k 2 -n x", "y 1\nz 2\nx 3"),
    ("echo 'a\na\nb\na' > x; uniq -c x", "2 a\n      1 b\n      1 a"),
    ("echo 'a\na\nb' > x; uniq x", "a\nb"),
    ("echo hello | tr a-z A-Z", "HELLO"),
    ("echo hello | tr '[:lower:]' '[:upper:]'", "HELLO"),
    ("echo hello | tr -d l", "heo"),
    ("echo 'a   b' | tr -s ' '", "a b"),
    ("echo 'x\n\ny' > x; nl x", "1\tx\n       \n     2\ty"),
    ("cat f.txt f.txt | wc -l", "6"),
    ("cat -n f.txt", "1\ta\n     2\tb\n     3\tc"),
    ("echo 'Apple\nbanana\ncherry' > x; grep -i A < x", "Apple\nbanana"),
    ("grep -v b < f.txt", "a\nc"),
    ("grep -c . < f.txt", "3"),
    ("grep -n c < f.txt", "3:c"),
    ("echo 'ab\naab\nabb' > x; grep -E '^a+b$' < x", "ab\naab"),
    ("echo 'a.b\naxb' > x; grep -F a.b < x", "a.b"),
    ("echo 'cat\nconcat\na cat!' > x; grep -w cat < x", "cat\na cat!"),
    ("echo 'cat\ncats' > x; grep -x cat < x", "cat"),
    ("echo 'call 555-1234' | grep '[0-9]\\{3\\}' ; echo 'call 555-1234' | grep '[0-9]{3}-[0-9]{4}'", "call 555-1234"),
    ("echo 'hello world\nhello there' > x; grep hello world < x", "hello world"),
    ("echo -e 'a\\tb'", "a\tb"),
    ("echo hi | rev | rev", "hi"),
    ("basename /a/b/", "b"),
    ("dirname a", "."),
    ("true && echo yes", "yes"),
]


@pytest.mark.parametrize("pipeline,expected", FLAGS)
def test_commands_and_their_flags(wd, pipeline, expected):
    r = sh(wd, pipeline)
    assert r.output == expected.strip(), r


def test_bad_flags_and_operands_get_a_message_not_a_guess(wd):
    r = sh(wd, "seq 5 | head -z")
    assert r.exit_code == 2 and "head: unsupported option -z" in r.output
    r = sh(wd, "seq x")
    assert r.exit_code == 2 and "seq: invalid integer argument 'x'" in r.output
    r = sh(wd, "grep '(' < f.txt")
    assert r.exit_code == 2 and "grep: invalid pattern" in r.output
    r = sh(wd, "cat nope.txt")
    assert (r.output, r.exit_code) == ("cat: nope.txt: No such file or directory", 1)


def test_grep_status_drives_and_or(wd):
    assert out(wd, "grep zzz < f.txt && echo found || echo none") == "none"
    assert out(wd, "grep -q b < f.txt && echo found || echo none") == "found"


def test_a_pathological_pattern_is_not_exponential(wd):
    t = time.monotonic()
    r = sh(wd, "grep '(a*)*b'", "a" * 20000 + "\n")
    assert (r.output, r.exit_code) == ("", 1)
    assert time.monotonic() - t < 5


# -- quoting and variables -------------------------------------------------------------------

QUOTING = [
    ("echo 'a  b'", "a  b"),
    ('echo "a  b"', "a  b"),
    ("echo a\\ \\ b", "a  b"),
    ("echo 'a|b;c&&d || e'", "a|b;c&&d || e"),
    ("echo \"it's\"", "it's"),
    ("echo 'say \"hi\"'", 'say "hi"'),
    ('echo "a\\"b\\\\c"', 'a"b\\c'),
    ("echo a'b'\"c\"", "abc"),
    ("echo a # a comment", "a"),
    ("echo a=b", "a=b"),
    ("echo '' x", "x"),
]


@pytest.mark.parametrize("pipeline,expected", QUOTING)
def test_quoting(wd, pipeline, expected):
    assert out(wd, pipeline) == expected


VARIABLES = [
    ("X=hi; echo $X ${X}", "hi hi"),
    ("echo $NOPE", "$NOPE"),
    ("echo ${NOPE} x$NOPE", "${NOPE} x$NOPE"),
    ("X=1; echo '$X' \"$X\"", "$X 1"),
    ("X=a; Y=${X}b; echo $Y", "ab"),
    ("X='a b'; echo \"[$X]\"", "[a b]"),
    ("X=\"q  r\"; echo [$X]", "[q  r]"),
    ("false; echo $?", "1"),
    ("true; echo $?", "0"),
    ("echo $ 5$ $1", "$ 5$ $1"),
    ("N=2; seq 5 | head -n $N", "1\n2"),
]


@pytest.mark.parametrize("pipeline,expected", VARIABLES)
def test_variables_and_unknown_ones_stay_literal(wd, pipeline, expected):
    assert out(wd, pipeline) == expected


def test_no_host_environment_is_visible(wd, monkeypatch):
    value = "env-value-that-must-not-leak-42"
    monkeypatch.setenv("WB_SHELL_PROBE", value)
    for line in ["echo $WB_SHELL_PROBE ${HOME} $PATH", "jq -n env", "jq -n '$ENV'", "jq -n '$ENV.WB_SHELL_PROBE'"]:
        r = sh(wd, line)
        assert value not in r.output and os.environ["HOME"] not in r.output, (line, r)
    assert out(wd, "echo $WB_SHELL_PROBE") == "$WB_SHELL_PROBE"


# -- && || ; ---------------------------------------------------------------------------------

CONTROL = [
    ("false && echo no", "", 1),
    ("false || echo yes", "yes", 0),
    ("true || echo no", "", 0),
    ("true && echo a && echo b", "a\nb", 0),
    ("false && echo a || echo b", "b", 0),
    ("true || echo a && echo b", "b", 0),
    ("false; echo after", "after", 0),
    ("echo a; false", "a", 1),
    ("false | true", "", 0),
    ("true | false", "", 1),
]


@pytest.mark.parametrize("pipeline,expected,status", CONTROL)
def test_and_or_sequencing(wd, pipeline, expected, status):
    r = sh(wd, pipeline)
    assert (r.output, r.exit_code) == (expected, status)
    assert r.error == (None if status == 0 else "exit_status")


def test_unknown_command_stops_the_line_with_the_originals_message(wd):
    r = sh(wd, "echo a > made.txt; bash -c 'id'; echo never > never.txt")
    assert (r.output, r.exit_code, r.error) == ('error: {:unknown_command, "bash"}', 127, "unknown_command")
    assert (wd / "made.txt").read_text() == "a\n" and not (wd / "never.txt").exists()
    assert sh(wd, "false && nope").exit_code == 1  # a skipped command is never looked up
    assert sh(wd, "/bin/cat f.txt").output == 'error: {:unknown_command, "/bin/cat"}'


def test_only_the_final_output_is_trimmed(wd):
    assert out(wd, "echo a | wc -c") == "2"  # the newline reached wc
    assert out(wd, "echo '  padded  '") == "padded"
    assert out(wd, "echo -e 'x\n\n' | wc -l") == "3"


def test_input_feeds_every_pipeline(wd):
    assert out(wd, "wc -l; rev", "ab\ncd\n") == "2\nba\ndc"


@pytest.mark.parametrize("line,message", [
    ("echo 'open", "unterminated single quote"),
    ('echo "open', "unterminated double quote"),
    ("seq 3 &", "background jobs (&) are not supported"),
    ("echo $(id)", "command substitution $(...) is not supported"),
    ("echo `id`", "command substitution with backquotes is not supported"),
    ("(echo a)", "subshells"),
    ("X=1 echo $X", "is not supported (there is no environment)"),
    ("| wc", "missing command before '|'"),
    ("echo a |", "missing command after '|'"),
    ("&& echo a", "missing command before '&&'"),
    ("echo >", "missing file name after '>'"),
    ("cat <<EOF", "here-documents"),
])
def test_syntax_errors_are_explained(wd, line, message):
    r = sh(wd, line)
    assert r.exit_code == 2 and r.error == "syntax_error" and r.output.startswith("error: syntax error: ")
    assert message in r.output


# -- redirections: confined, written by the host ---------------------------------------------

def test_redirections_in_out_append(wd):
    assert out(wd, "seq 3 > n.txt; echo 4 >> n.txt; wc -l < n.txt") == "4"
    assert (wd / "n.txt").read_text() == "1\n2\n3\n4\n"
    assert out(wd, "sort -r < f.txt > sub.txt; cat sub.txt") == "c\nb\na"
    assert out(wd, f"echo abs > {wd}/abs.txt; cat abs.txt") == "abs"
    assert out(wd, "> empty.txt; wc -c empty.txt") == "0 empty.txt"
    assert out(wd, "cat nope.txt 2> err.txt; cat err.txt") == "cat: nope.txt: No such file or directory"
    assert out(wd, "cat nope.txt 2>/dev/null; echo $?") == "1"
    assert out(wd, "cat nope.txt 2>&1 | wc -l") == "1"
    assert out(wd, "echo gone > /dev/null") == ""
    assert out(wd, "cat nope.txt 2>&1 2> e2.txt | wc -l; cat e2.txt") == "0\ncat: nope.txt: No such file or directory"
    assert out(wd, "cat f.txt nope.txt > both.txt 2>&1; cat both.txt") == "a\nb\nc\ncat: nope.txt: No such file or directory"


def test_redirection_escapes_are_refused(wd, tmp_path):
    outside = tmp_path / "outside.txt"
    (tmp_path / "wd-evil").mkdir()
    os.symlink(tmp_path / "secret.txt", wd / "link-out")
    os.symlink(tmp_path, wd / "dir-out")
    cases = {
        "echo x > ../outside.txt": "write blocked: path escapes your working dir (../outside.txt)",
        f"echo x > {outside}": f"write blocked: path escapes your working dir ({outside})",
        f"echo x > {tmp_path}/wd-evil/x": "write blocked: path escapes your working dir",
        "echo x >> link-out": "write blocked: path escapes your working dir (link-out)",
        "echo x > dir-out/outside.txt": "write blocked: path escapes your working dir (dir-out/outside.txt)",
        "echo x > _steps.jsonl": "write blocked: path is read-only (a record of this run) (_steps.jsonl)",
        "cat < ../secret.txt": "read blocked: path escapes your working dir (../secret.txt)",
        "cat < link-out": "read blocked: path escapes your working dir (link-out)",
        "cat < /etc/passwd": "read blocked: path escapes your working dir (/etc/passwd)",
    }
    for line, msg in cases.items():
        r = sh(wd, line)
        assert msg in r.output and r.exit_code == 1, (line, r)
    assert not outside.exists() and not (tmp_path / "wd-evil" / "x").exists()
    assert (tmp_path / "secret.txt").read_text() == "outside the workdir\n"
    # a blocked redirection fails that command only: || sees it
    assert out(wd, "echo x > ../o.txt || echo refused").endswith("refused")


def test_a_write_never_follows_a_symlink_even_inside(wd):
    (wd / "real.txt").write_text("keep\n")
    os.symlink(wd / "real.txt", wd / "inner-link")
    r = sh(wd, "echo x > inner-link")
    assert r.exit_code == 1 and "write blocked: path is a symlink" in r.output
    assert (wd / "real.txt").read_text() == "keep\n"


# -- what a stage can see ----------------------------------------------------------------------

def test_a_stage_cannot_read_outside_the_workdir(wd, tmp_path):
    os.symlink(tmp_path / "secret.txt", wd / "link-out")
    for line in ["cat /etc/passwd", "cat ../secret.txt", f"cat {tmp_path}/secret.txt", "cat link-out",
                 "cat ../../../../../../etc/passwd", "head -n 1 /proc/self/environ", f"cat {wd}/../secret.txt"]:
        r = sh(wd, line)
        assert r.exit_code == 1 and line.split()[0] + ": " in r.output, (line, r)
        assert "outside the workdir" not in r.output and "root:" not in r.output


def test_stages_see_the_workdir_read_only(wd, tmp_path):
    """A raw WASI program (not one of ours) in a stage's sandbox cannot create a file."""
    import wasmtime

    from workbooks.agent.shell import sandbox

    # path_open(fd 3 = the first preopen, "x.txt", O_CREAT) and exit with the errno it returns
    wat = """(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "x.txt")
      (func (export "_start")
        (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 5)
                               (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff)
                               (i32.const 0) (i32.const 64)))))"""
    probe = tmp_path / "probe.wasm"
    probe.write_bytes(wasmtime.wat2wasm(wat))
    stage = sandbox.Stage("probe", ["probe"], b"", wd, time.monotonic() + 10)
    try:
        inst = stage.instance(wasmtime.Module(sandbox.engine(), probe.read_bytes()))
        _, code = stage.call(inst.exports(stage.store)["_start"])
    finally:
        stage.close()
    assert code not in (None, 0)  # an errno (EPERM / ENOTCAPABLE), not success
    assert not (wd / "x.txt").exists()


def test_no_shm_or_temp_files_are_left_behind(wd):
    before = set(os.listdir("/dev/shm"))
    sh(wd, "seq 100 | sort -r | head -n 2; jq -n 1")
    assert set(os.listdir("/dev/shm")) - before == set()


# -- limits ------------------------------------------------------------------------------------

def test_a_runaway_stage_is_stopped_by_the_deadline(wd):
    async def main():
        ctx = ctx_for(wd, deadline=trio.current_time() + 1.0)
        t = time.monotonic()
        r = await run_pipeline(ctx, "jq -n '0 | until(false; . + 1)'; echo never", None)
        return r, time.monotonic() - t

    r, took = trio.run(main)
    assert (r.exit_code, r.error) == (124, "deadline") and "time limit" in r.output and "never" not in r.output
    assert took < 4


def test_the_deadline_holds_across_many_quick_stages(wd):
    async def main():
        ctx = ctx_for(wd, deadline=trio.current_time() + 0.3)
        t = time.monotonic()
        r = await run_pipeline(ctx, "; ".join(["echo x | rev"] * 4000), None)
        return r, time.monotonic() - t

    r, took = trio.run(main)
    assert (r.exit_code, r.error) == (124, "deadline") and "time limit ran out" in r.output
    assert took < 3


def test_huge_output_is_capped_per_stage(wd):
    t = time.monotonic()
    r = sh(wd, "seq 1 100000000 | wc -l")
    assert (r.exit_code, r.error) == (125, "output") and "seq: stopped: output over the 1048576 byte limit" in r.output
    assert time.monotonic() - t < 5


def test_memory_is_capped(wd):
    r = sh(wd, "jq -n '[range(100000000)] | length'")
    assert r.exit_code != 0 and ("memory" in r.output)


def test_cancelling_the_tool_returns_at_once(wd):
    async def main():
        ctx = ctx_for(wd)
        t = time.monotonic()
        with trio.move_on_after(0.5):
            await run_pipeline(ctx, "jq -n '0 | until(false; . + 1)'", None)
        return time.monotonic() - t

    assert trio.run(main) < 2


# -- jq --------------------------------------------------------------------------------------

JQ = [
    ("jq .users[0].name < data.json", '"ada"'),
    ("jq -r '.users[] | .name' < data.json", "ada\ngrace\nalan"),
    ("jq -c '[.users[].name]' < data.json", '["ada","grace","alan"]'),
    ("jq '.users | length' < data.json", "3"),
    ("jq -r '.users[] | select(.name | startswith(\"a\")) | .name' < data.json", "ada\nalan"),
    ("jq -c 'map(. * 2)'", "[2,4,6]", "[1,2,3]"),
    ("jq -c .", '{"a":1}\n{"a":2}', '{"a":1} {"a":2}'),
    ("jq -s 'add'", "6", "1 2 3"),
    ("jq -n --arg who world '\"hello \\($who)\"'", '"hello world"'),
    ("jq -n --argjson n 4 '$n * 2'", "8"),
    ("jq .", '{\n  "a": [\n    1\n  ]\n}', '{"a":[1]}'),
    ("jq -r '.users[].name' < data.json | sort -r | head -n 1", "grace"),
    ("jq '.a' | upper", '"X"', '{"a":"x"}'),
]


@pytest.mark.parametrize("case", JQ, ids=[c[0] for c in JQ])
def test_jq_filters(wd, case):
    line, expected = case[0], case[1]
    r = sh(wd, line, case[2] if len(case) > 2 else None)
    assert (r.output, r.exit_code) == (expected, 0), r


def test_jq_errors_are_clear(wd):
    r = sh(wd, "jq .a", "{not json")
    assert r.exit_code == 5 and r.output.startswith("jq: error: invalid JSON input")
    r = sh(wd, "jq -Q .")
    assert r.exit_code == 2 and "jq: unsupported option -Q" in r.output
    r = sh(wd, "jq -e .a", '{"a": false}')
    assert r.exit_code == 1


def test_jq_missing_is_reported_not_crashed(wd, monkeypatch, tmp_path):
    from workbooks.agent.shell import jq

    monkeypatch.setattr(jq, "_jqjs_source", None)
    monkeypatch.setenv("WB_JQJS", str(tmp_path / "absent" / "jq.js"))
    r = sh(wd, "jq .", "{}")
    assert (r.exit_code, r.error) == (127, "jq_unavailable") and r.output.startswith("error: jq unavailable: jqjs not found")


# -- speed -----------------------------------------------------------------------------------

def test_ten_stages_over_100kb_finish_well_under_a_second(wd):
    data = "".join(f"line {i % 997} word{i % 13} {'x' * (i % 40)}\n" for i in range(3000))
    assert 95_000 < len(data) < 140_000
    line = ("cat | grep line | sort | uniq -c | sort -rn | head -n 500 | tr a-z A-Z | rev | nl | wc -l")
    sh(wd, "seq 1", None)  # the module is compiled or loaded from the disk cache once per process
    t = time.perf_counter()
    r = sh(wd, line, data)
    took = time.perf_counter() - t
    print(f"\n10-stage pipeline over {len(data)} bytes: {took * 1000:.1f} ms")
    assert (r.output, r.exit_code) == ("500", 0)
    assert took < 1.0


# -- the tool --------------------------------------------------------------------------------

def test_the_tool_declaration_and_bad_calls(wd):
    assert base_tools()["shell"] is SHELL and SHELL.needs_exec is False
    assert SHELL.parameters["required"] == ["pipeline"]
    assert set(SHELL.parameters["properties"]) == {"pipeline", "input"}
    ctx = ctx_for(wd)
    r = trio.run(SHELL, ctx, {})
    assert r.output == "shell error: required arg `pipeline` missing or not a string" and r.exit_code != 0
    r = trio.run(SHELL, ctx, {"pipeline": 5})
    assert r.output == "shell error: required arg `pipeline` missing or not a string"
    assert trio.run(SHELL, ctx, {"pipeline": "rev", "input": "abc"}).output == "cba"


def test_the_tool_redacts_secret_values(wd):
    secret = "sk-live-0123456789abcdef"
    (wd / "leak.txt").write_text(f"token={secret}\n")
    ctx = ctx_for(wd, secrets=Secrets({"API_KEY": secret}))
    r = trio.run(SHELL, ctx, {"pipeline": "cat leak.txt | upper; cat leak.txt"})
    assert secret not in r.output and "token=[secret:API_KEY]" in r.output
