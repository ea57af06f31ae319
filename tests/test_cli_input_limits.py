"""Kernel verbs read a regular file or a pipe, of bounded size (WB_MAX_INPUT_MB, default 64):
devices and directories are refused at once, too much input is refused after at most the
limit plus one byte, both with exit 2 and a typed error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from conftest import run_wbx

DOC = b"* TODO one\n** two\n"


def _err(r) -> dict:
    return json.loads(r.stdout)["error"]


def test_dev_zero_is_refused_promptly():
    t0 = time.monotonic()
    r = run_wbx("--json", "query", "/dev/zero", timeout=30)
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2
    err = _err(r)
    assert err["kind"] == "unsupported_input" and "character device" in err["message"] and err["hint"]


def test_devices_and_directories_are_refused_for_every_kernel_verb(tmp_path):
    for verb in ("query", "tangle", "lint", "render"):
        for path in ("/dev/zero", "/dev/null", str(tmp_path)):
            r = run_wbx("--json", verb, path)
            assert r.returncode == 2, (verb, path, r.stdout)
            assert _err(r)["kind"] == "unsupported_input"
    r = run_wbx("--json", "check-upgrade", "/dev/urandom", "/dev/zero")
    assert r.returncode == 2 and _err(r)["kind"] == "unsupported_input"


def test_stdin_from_dev_zero_stops_at_the_limit():
    with open("/dev/zero", "rb") as zero:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "workbooks", "--json", "query", "-"], stdin=zero,
                           capture_output=True, timeout=60, env=dict(os.environ, WB_MAX_INPUT_MB="2"))
    assert time.monotonic() - t0 < 15
    assert r.returncode == 2
    err = _err(r)
    assert err["kind"] == "input_too_large" and "2 MB" in err["message"] and "WB_MAX_INPUT_MB" in err["hint"]


def test_a_pipe_over_a_small_limit_is_refused_and_not_read_to_the_end():
    """The writer offers 64 MB; wbx stops after 1 MB + 1 byte, so most of it is never taken."""
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "--json", "lint", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, WB_MAX_INPUT_MB="1"))
    written = 0
    block = b"* headline\n" * 6000

    def feed():
        nonlocal written
        try:
            while written < 64 << 20:
                p.stdin.write(block)
                written += len(block)
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                p.stdin.close()
            except OSError:
                pass

    t = threading.Thread(target=feed)
    t.start()
    out = p.stdout.read()  # returns when wbx exits
    rc = p.wait(timeout=60)
    t.join(timeout=60)
    p.stderr.close()
    p.stdout.close()
    assert rc == 2
    assert json.loads(out)["error"]["kind"] == "input_too_large"
    assert written < 32 << 20  # the writer was cut off long before its 64 MB


def test_a_file_over_the_limit_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "huge.org"
    with open(big, "wb") as fh:  # sparse: 4 GB that reading would take a long time to produce
        fh.truncate(4 << 30)
    t0 = time.monotonic()
    r = run_wbx("--json", "query", str(big))
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2 and _err(r)["kind"] == "input_too_large" and "64 MB" in _err(r)["message"]


def test_at_the_limit_is_fine_one_byte_more_is_not(tmp_path):
    limit = 1 << 20
    doc = (b"* h\n" * (limit // 4 + 1))[:limit]
    f = tmp_path / "exact.org"
    f.write_bytes(doc)
    env = {"WB_MAX_INPUT_MB": "1"}
    r = run_wbx("query", str(f), env=env)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == limit // 4
    assert run_wbx("query", "-", input=doc, env=env).returncode == 0
    f.write_bytes(doc + b"\n")
    assert run_wbx("query", str(f), env=env).returncode == 2
    assert run_wbx("query", "-", input=doc + b"\n", env=env).returncode == 2


def test_a_bad_limit_setting_is_a_usage_error():
    for bad in ("abc", "0", "-5", "nan", "99999"):
        r = run_wbx("--json", "query", "-", input=DOC, env={"WB_MAX_INPUT_MB": bad})
        assert r.returncode == 2, bad
        assert "WB_MAX_INPUT_MB" in _err(r)["message"]


def test_pipes_work_named_fifos_are_refused_at_once(tmp_path):
    r = run_wbx("query", "-", input=DOC)
    assert r.returncode == 0 and [h["title"] for h in json.loads(r.stdout)] == ["one", "two"]
    # a pipe handed over by name, as a shell's <(cmd) does: /dev/fd/N
    rfd, wfd = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "workbooks", "query", f"/dev/fd/{rfd}"], pass_fds=(rfd,),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(rfd)
    os.write(wfd, DOC)
    os.close(wfd)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert [h["title"] for h in json.loads(out)] == ["one", "two"]
    # a FIFO in the file system with nobody writing: refused, never waited on
    fifo = tmp_path / "doc.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    r = run_wbx("--json", "query", str(fifo), timeout=30)
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2 and _err(r)["kind"] == "unsupported_input" and "FIFO" in _err(r)["message"]
    empty = subprocess.run([sys.executable, "-m", "workbooks", "query", "-"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
    assert empty.returncode == 0 and json.loads(empty.stdout) == []  # `< /dev/null` is an empty document
