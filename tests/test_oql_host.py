"""The wasm host: disk cache, one call per operation, typed errors, recovery, UTF-8 checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
import sys

import pytest
import wasmtime

from workbooks.oql import InvalidUtf8, Kernel, KernelDeadline, KernelMemory, KernelTrap, WASM_PATH


def test_shipped_kernel_has_zero_imports_and_every_op():
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, WASM_PATH.read_bytes())
    assert [i.name for i in module.imports] == []
    names = {e.name for e in module.exports}
    for op in ("parse_headlines", "tangle_plan", "validate", "lint", "check_upgrade", "render", "render_with"):
        assert op in names
    assert {"memory", "wb_reserve"} <= names


def test_compiled_module_is_cached_on_disk_and_reused(tmp_path):
    code = "from workbooks.oql import Kernel; import json; print(json.dumps(Kernel().load_info))"
    env = dict(os.environ, WB_CACHE=str(tmp_path))
    first = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    second = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    assert first["source"] == "compiled"
    assert second["source"] == "disk-cache"
    assert first["wasm_sha256"] == hashlib.sha256(WASM_PATH.read_bytes()).hexdigest()
    cached = list(tmp_path.glob("oql-*.cwasm"))
    assert len(cached) == 1


def test_cache_key_changes_with_the_wasm(tmp_path, hostile_wasm):
    env = dict(os.environ, WB_CACHE=str(tmp_path))
    for path in (str(WASM_PATH), str(hostile_wasm)):
        subprocess.run([sys.executable, "-c", f"from workbooks.oql import Kernel; Kernel({path!r})"], env=env, check=True)
    assert len(list(tmp_path.glob("oql-*.cwasm"))) == 2


def test_exactly_one_wasm_call_per_operation():
    k = Kernel()
    calls = []
    real = k._raw_call

    def counting(func, params):
        calls.append(func)
        return real(func, params)

    k._raw_call = counting
    k.call_raw("lint", "* a")  # may grow the input buffer once
    calls.clear()
    for op in ("parse_headlines", "tangle_plan", "validate", "lint", "render"):
        k.call_raw(op, "* a\nsome text\n")
        assert len(calls) == 1, op
        calls.clear()
    k.call_raw("check_upgrade", "* a", "* b")
    assert len(calls) == 1
    calls.clear()
    # a bigger input grows the buffer with one extra call, then it's one call again
    big = "* x\n" * 100_000
    k.call_raw("lint", big)
    assert len(calls) == 2
    calls.clear()
    k.call_raw("lint", big)
    assert len(calls) == 1


def test_two_argument_operations_see_both_arguments():
    k = Kernel()
    # check_upgrade of a document against itself is always safe
    doc = "* w :workflow:\n** c :component:\n#+begin_src js :out x\nx\n#+end_src\n"
    assert k.check_upgrade(doc, doc) == []


def test_invalid_utf8_is_refused_with_the_byte_offset():
    k = Kernel()
    with pytest.raises(InvalidUtf8) as e:
        k.call_raw("parse_headlines", b"* ok\n* bad \xff here")
    assert e.value.offset == 11
    assert "offset 11" in str(e.value)
    assert e.value.code == "bad_request"
    with pytest.raises(InvalidUtf8) as e:
        k.call_raw("check_upgrade", "fine", b"ab\xc3")
    assert e.value.offset == 2 and e.value.arg == 1
    with pytest.raises(InvalidUtf8):
        k.call_raw("lint", "lone \ud800 surrogate")
    assert k.call_raw("lint", "* still works") == b"[]"


def test_deadline_memory_and_trap_are_typed_and_the_next_call_works(hostile_wasm):
    k = Kernel(hostile_wasm, memory_mb=32, deadline_ms=200)
    with pytest.raises(KernelDeadline) as e:
        k.call("render", "loop forever")
    assert e.value.code == "deadline" and "200 ms" in e.value.message
    assert k.call("render", "fine") == "<p>ok</p>"
    with pytest.raises(KernelMemory) as e:
        k.call("render", "bomb")
    assert e.value.code == "memory" and "32 MB" in e.value.message
    assert k.call("render", "fine") == "<p>ok</p>"
    with pytest.raises(KernelTrap) as e:
        k.call("render", "trap")
    assert e.value.code == "kernel_trap"
    assert k.call("render", "fine") == "<p>ok</p>"
    assert k.resets == 3


def test_per_call_deadline_override(hostile_wasm):
    import time

    k = Kernel(hostile_wasm, deadline_ms=10_000)
    t0 = time.perf_counter()
    with pytest.raises(KernelDeadline):
        k.call("render", "loop", deadline_ms=50)
    assert time.perf_counter() - t0 < 2


def test_memory_cap_applies_to_real_kernel_inputs():
    k = Kernel(memory_mb=8)
    with pytest.raises(KernelMemory):
        k.call_raw("parse_headlines", "x" * (16 << 20))
    assert json.loads(k.call_raw("parse_headlines", "* fine")) is not None


def test_unknown_operation_and_wrong_arity():
    from workbooks.oql import KernelError

    k = Kernel()
    with pytest.raises(KernelError):
        k.call_raw("format_disk", "x")
    with pytest.raises(KernelError):
        k.call_raw("check_upgrade", "only one")


IDLE_PROBE = r"""
import os, sys, time
from workbooks.oql import Kernel, KernelDeadline

def switches():
    n = 0
    for t in os.listdir("/proc/self/task"):
        for line in open(f"/proc/self/task/{t}/status"):
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n

k = Kernel(sys.argv[1])
k.call_raw("render", "* warm")
time.sleep(0.2)
a = switches()
time.sleep(1.0)
idle = switches() - a
try:  # the ticker still wakes for a call that runs long: its deadline is kept
    k.call_raw("render", "loop", deadline_ms=100)
    print("no-deadline")
except KernelDeadline:
    print("deadline")
print(idle)
"""


def test_an_idle_kernel_process_does_not_wake_up(hostile_wasm):
    # Epoch ticks only run while a call is in progress: an idle worker costs nothing (it used to
    # wake 200 times a second), and a looping call is still stopped at its deadline.
    r = subprocess.run([sys.executable, "-c", IDLE_PROBE, str(hostile_wasm)], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    verdict, idle = r.stdout.split()
    assert verdict == "deadline"
    assert int(idle) < 20, f"{idle} context switches in one idle second"
