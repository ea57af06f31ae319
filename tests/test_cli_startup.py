"""wbx start-up: the lazy verb registry is complete and correct, a kernel verb imports only what
it needs, and the UTF-8 check that replaced a whole-document decode gives Python's offsets."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_wbx
from workbooks.cli import main as cli_main

# Modules a kernel verb has no business importing (each costs start-up time).
NOT_FOR_KERNEL_VERBS = {
    "urllib.request", "http.client", "email.parser", "dataclasses", "shutil", "sqlite3", "zmq", "trio",
    "cryptography", "workbooks.page", "workbooks.gitstore", "workbooks.pool", "workbooks.supervisor",
    "workbooks.cli.ops_verbs", "workbooks.cli.trust_verbs", "workbooks.cli.admin_verbs",
}


def _verbs_of(module: str) -> set[str]:
    parser = cli_main._Parser(prog="wbx", add_help=False)
    subs = parser.add_subparsers(dest="verb", parser_class=cli_main._Parser, prog="wbx")
    importlib.import_module(module).register(subs)
    return set(subs.choices)


def test_verb_index_names_each_verb_of_each_module():
    registered = {m: _verbs_of(m) for m in cli_main.VERB_MODULES}
    for module, verbs in registered.items():
        indexed = {v for v, m in cli_main.VERB_INDEX.items() if m == module}
        assert verbs == indexed, f"VERB_INDEX in workbooks/cli/main.py is out of date for {module}"


def test_help_json_still_shows_the_whole_verb_tree():
    r = run_wbx("help", "--json")
    tree = json.loads(r.stdout)["data"]
    assert set(tree["verbs"]) == set(cli_main.VERB_INDEX) | {"help"}
    assert {"log", "diff", "commit"} <= set(tree["verbs"]["repo"]["verbs"])
    assert {"create", "list", "revoke"} <= set(tree["verbs"]["key"]["verbs"])
    human = run_wbx("--help")
    assert human.returncode == 0 and b"whoami" in human.stdout and b"query" in human.stdout


def test_a_stale_index_entry_only_costs_speed(monkeypatch):
    """A verb the index places in the wrong module is still found (all modules are tried)."""
    monkeypatch.setitem(cli_main.VERB_INDEX, "whoami", "workbooks.cli.kernel_verbs")
    parser = cli_main.build_parser("whoami")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "whoami" in sub.choices and "query" in sub.choices


def _imported_by(*args: str, stdin: bytes) -> set[str]:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "workbooks", *args], input=stdin,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    names = set()
    for line in r.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "wasmtime" in names  # the measurement itself works
    return names


def test_kernel_verbs_import_only_what_they_need():
    for args in (("lint", "-"), ("query", "-"), ("render", "-")):
        names = _imported_by(*args, stdin=b"* one line\n")
        extra = {n for n in names if n in NOT_FOR_KERNEL_VERBS or n.split(".")[0] in ("zmq", "trio", "cryptography")}
        assert not extra, (args, sorted(extra))


def test_importing_the_setupfile_helpers_does_not_load_wasmtime():
    code = "import sys, workbooks.oql.setupfile, workbooks.oql.render_options, workbooks.oql.errors; print('wasmtime' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.stdout.strip() == b"False", r.stderr


# -- the UTF-8 check ----------------------------------------------------------------------------
PIECES = [b"a", b"\n", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xff", b"\x80", b"\xc3",
          b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80" * 5, b"\xc0\xaf"]


@given(st.lists(st.sampled_from(PIECES) | st.binary(max_size=6), max_size=60), st.integers(1, 9))
@settings(max_examples=600, deadline=None)
def test_utf8_offset_is_pythons(pieces, chunk):
    from workbooks.oql import kernel

    data = b"".join(pieces)
    try:
        data.decode("utf-8")
        expected = None
    except UnicodeDecodeError as e:
        expected = e.start
    old = kernel._UTF8_CHUNK
    kernel._UTF8_CHUNK = chunk
    try:
        assert kernel.utf8_error_offset(data) == expected
    finally:
        kernel._UTF8_CHUNK = old
