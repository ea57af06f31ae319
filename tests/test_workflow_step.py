"""One workflow step under wasmtime (workbooks.workflow.step / local_exec): JS filters and run(input),
wat commands and reactors, limits (time, fuel, memory, input, output), confinement, redaction."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import trio
import wasmtime

from workbooks.agent.secrets import Secrets
from workbooks.workflow.build import Built
from workbooks.workflow.local_exec import LocalExecutor
from workbooks.workflow.step import run_step
from workbooks.workflow.types import INPUT_MAX, Component, Limits, StepContext


def make_ctx(tmp_path: Path, name: str = "s", **kw) -> StepContext:
    limits = kw.pop("limits", Limits(timeout_s=10, fuel=5_000_000_000, memory_mb=128))
    return StepContext(tenant=kw.pop("tenant", "acme"), workflow=kw.pop("workflow", "digest"), run_id="wf-1",
                       step_dir=tmp_path / "steps" / name, data_dir=tmp_path / "data", limits=limits, **kw)


def js(src: str) -> Built:
    return Built(lang="js", key="k", wasm=None, js=src, kind="js", cached=True, ms=0.0)


def wat(tmp_path: Path, text: str, kind: str = "command") -> Built:
    p = tmp_path / f"m{abs(hash(text))}.wasm"
    p.write_bytes(wasmtime.wat2wasm(text))
    return Built(lang="wat", key="k", wasm=p, js=None, kind=kind, cached=False, ms=0.0)


# a WASI command: copies stdin to stdout, upper-casing ASCII letters
WAT_UPPER = r"""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32) (local $i i32) (local $c i32)
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 60000))
        (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $i (i32.const 0))
        (block $up (loop $each
          (br_if $up (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $c (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
          (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
            (then (i32.store8 (i32.add (i32.const 1024) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $each)))
        (i32.store (i32.const 4) (local.get $n))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br $more)))))
"""

# a reactor: _initialize sets a flag, run() writes "reactor:" + the flag digit
WAT_REACTOR = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "reactor:0")
  (func (export "_initialize") (i32.store8 (i32.const 108) (i32.const 55)))
  (func (export "run") (result i32)
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.const 0)))
"""

WAT_SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
WAT_GROW = r"""
(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))
"""
WAT_TRAP = '(module (memory (export "memory") 1) (func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0)))))'
WAT_EXIT3 = r"""
(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))
"""


def test_js_run_gets_json_and_returns_json(tmp_path):
    ctx = make_ctx(tmp_path)
    r = run_step(js("export function run(raw) { return {n: raw.n + 1, seen: typeof raw}; }"), b'{"n": 41}', ctx, ())
    assert r.ok and r.code == "ok", r.error
    assert json.loads(r.output) == {"n": 42, "seen": "object"}
    assert r.fuel_used and r.fuel_used > 0


def test_js_run_strings_async_and_empty_input(tmp_path):
    ctx = make_ctx(tmp_path)
    src = """export async function run(raw) {
      const later = await new Promise((res) => Promise.resolve().then(() => res('later')));
      return `${typeof raw}:${raw === undefined ? '-' : raw}:${later}:é`;
    }"""
    r = run_step(js(src), b"not json", ctx, ())
    assert r.code == "ok", r.error
    assert r.output == "string:not json:later:é".encode()
    r = run_step(js(src), b"", ctx, ())
    assert r.output == b"undefined:-:later:\xc3\xa9"
    # undefined gives no output; null and numbers are JSON
    assert run_step(js("export function run() {}"), b"x", ctx, ()).output == b""
    assert run_step(js("export function run() { return null }"), b"x", ctx, ()).output == b"null"
    assert run_step(js("export const run = (x) => x * 2;"), b"21", ctx, ()).output == b"42"


def test_js_filters_read_stdin_and_write_stdout(tmp_path):
    ctx = make_ctx(tmp_path)
    javy = """
      const chunks = []; const buf = new Uint8Array(7); let n;
      while ((n = Javy.IO.readSync(0, buf)) > 0) chunks.push(buf.slice(0, n));
      const text = chunks.map((c) => new TextDecoder().decode(c)).join('');
      Javy.IO.writeSync(1, new TextEncoder().encode(JSON.stringify({len: text.length, up: text.toUpperCase()})));
    """
    r = run_step(js(javy), b"hello filter", ctx, ())
    assert r.code == "ok", r.error
    assert json.loads(r.output) == {"len": 12, "up": "HELLO FILTER"}
    qjs_style = "import * as std from 'qjs:std'; const s = std.in.readAsString(); print(s.split(',').reverse().join(','));"
    assert run_step(js(qjs_style), b"a,b,c", ctx, ()).output == b"c,b,a\n"


def test_js_console_goes_to_logs_never_stdout(tmp_path):
    lines = []
    ctx = make_ctx(tmp_path, log=lines.append)
    src = "console.log('working on', {k: 1}); print('out'); console.error(new Error('careful'));"
    r = run_step(js(src), b"", ctx, ())
    assert r.code == "ok", r.error
    assert r.output == b"out\n"
    assert r.logs[0] == 'working on {"k":1}' and "careful" in r.logs[1]
    assert lines == r.logs
    # a lone surrogate (legal in a JS string) never reaches the logs or the error as such
    r = run_step(js("export function run() { console.log('half \\ud800 pair'); throw new Error('bad \\udc00'); }"), b"", ctx, ())
    assert r.logs[-1] == "half ? pair" and r.error.startswith("bad ?")
    json.dumps(r.logs, ensure_ascii=False).encode("utf-8")
    # in run() mode, print output is a log line too: the output is the return value only
    r = run_step(js("export function run() { print('noise'); return 'value'; }"), b"", ctx, ())
    assert r.output == b"value" and r.logs == ["noise"]


def test_js_errors_name_the_component_line(tmp_path):
    ctx = make_ctx(tmp_path)
    r = run_step(js("export function run(x) {\n  const a = 1;\n  throw new RangeError('bad input ' + x);\n}"), b"7", ctx, ())
    assert not r.ok and r.code == "error"
    assert r.error.startswith("RangeError: bad input 7")
    assert "component:3:" in r.error and "<cmdline>" not in r.error
    r = run_step(js("let x = ;"), b"", ctx, ())
    assert r.code == "error" and "SyntaxError" in r.error and "component:1:" in r.error
    r = run_step(js("null.boom;"), b"", ctx, ())
    assert r.code == "error" and "TypeError" in r.error
    r = run_step(js("export function run() { return 10n; }"), b"", ctx, ())
    assert r.code == "bad_output" and "BigInt" in r.error
    # a promise that never settles keeps QuickJS's loop turning: the step's limits end it
    short = make_ctx(tmp_path, limits=Limits(timeout_s=2, fuel=300_000_000, memory_mb=64))
    r = run_step(js("export function run() { return new Promise(() => {}); }"), b"", short, ())
    assert r.code in ("fuel", "timeout") and not r.ok


def test_wat_command_filter(tmp_path):
    ctx = make_ctx(tmp_path)
    data = b"stdin to stdout, " * 5000
    r = run_step(wat(tmp_path, WAT_UPPER), data, ctx, ())
    assert r.ok, r.error
    assert r.output == data.upper()


def test_wat_reactor_initialize_then_run(tmp_path):
    ctx = make_ctx(tmp_path)
    r = run_step(wat(tmp_path, WAT_REACTOR, kind="reactor"), b"", ctx, ())
    assert r.ok, r.error
    assert r.output == b"reactor:7"


def test_wat_trap_and_exit_status(tmp_path):
    ctx = make_ctx(tmp_path)
    r = run_step(wat(tmp_path, WAT_TRAP), b"", ctx, ())
    assert r.code == "trap" and r.error.startswith("trap: wasm trap: integer divide by zero")
    r = run_step(wat(tmp_path, WAT_EXIT3), b"", ctx, ())
    assert r.code == "error" and "status 3" in r.error


def test_runaway_loop_stops_on_time_then_next_step_works(tmp_path):
    ctx = make_ctx(tmp_path, limits=Limits(timeout_s=0.5, fuel=10**15, memory_mb=64))
    for built in (js("export function run() { for (;;) {} }"), wat(tmp_path, WAT_SPIN)):
        t = time.monotonic()
        r = run_step(built, b"", ctx, ())
        took = time.monotonic() - t
        assert r.code == "timeout", (r.code, r.error)
        assert "time limit" in r.error and took < 5, took
    assert run_step(js("export function run(x) { return x + 1 }"), b"1", ctx, ()).output == b"2"


def test_runaway_loop_stops_on_fuel(tmp_path):
    ctx = make_ctx(tmp_path, limits=Limits(timeout_s=30, fuel=200_000_000, memory_mb=64))
    for built in (js("let i = 0; while (true) i++;"), wat(tmp_path, WAT_SPIN)):
        t = time.monotonic()
        r = run_step(built, b"", ctx, ())
        assert r.code == "fuel", (r.code, r.error)
        assert r.fuel_used == 200_000_000 and time.monotonic() - t < 10
    assert run_step(js("export function run() { return 'fine' }"), b"", ctx, ()).output == b"fine"


def test_memory_bomb_stops_at_the_cap_then_next_step_works(tmp_path):
    ctx = make_ctx(tmp_path, limits=Limits(timeout_s=20, fuel=10**12, memory_mb=48))
    bombs = [js("export function run() { const a = []; for (;;) a.push(new Uint8Array(1 << 20)); }"),
             js("const parts = []; for (let i = 0; ; i++) parts.push('x'.repeat(1 << 16) + i);"),
             wat(tmp_path, WAT_GROW)]
    for built in bombs:
        t = time.monotonic()
        r = run_step(built, b"", ctx, ())
        assert r.code == "memory", (r.code, r.error)
        assert "48 MiB" in r.error and time.monotonic() - t < 15
    assert run_step(js("export function run() { return [1, 2].length }"), b"", ctx, ()).output == b"2"
    # a module whose initial memory is over the cap does not start
    r = run_step(wat(tmp_path, '(module (memory (export "memory") 1000) (func (export "_start")))'), b"", ctx, ())
    assert r.code == "memory"


def test_input_too_large_is_refused_before_running(tmp_path):
    ctx = make_ctx(tmp_path)
    r = run_step(js("export function run() { return 'ran' }"), b"x" * (INPUT_MAX + 1), ctx, ())
    assert r.code == "input_too_large" and str(INPUT_MAX) in r.error and r.output == b""
    assert not (ctx.step_dir / "x").exists()
    small = make_ctx(tmp_path, limits=Limits(timeout_s=5))
    assert run_step(js("export function run(x) { return x.length }"), b"y" * 1000, small, ()).output == b"1000"


def test_output_over_the_cap_is_bad_output(tmp_path):
    ctx = make_ctx(tmp_path, limits=Limits(timeout_s=10, output_max=1000))
    r = run_step(js("export function run() { return 'z'.repeat(1001) }"), b"", ctx, ())
    assert r.code == "bad_output" and r.output == b""
    r = run_step(wat(tmp_path, WAT_UPPER), b"q" * 5000, ctx, ())
    assert r.code in ("bad_output", "error") and r.output == b""
    assert run_step(js("export function run() { return 'z'.repeat(1000) }"), b"", ctx, ()).output == b"z" * 1000


def test_outputs_logs_and_errors_are_redacted(tmp_path):
    secret = "tok-9f8e7d6c5b4a"
    ctx = make_ctx(tmp_path, secrets=Secrets({"API_TOKEN": secret}))
    src = "export function run(x) { console.log('token is ' + x.t); return {echo: x.t, q: JSON.stringify(x.t)}; }"
    r = run_step(js(src), json.dumps({"t": secret}).encode(), ctx, ())
    assert r.ok, r.error
    assert secret.encode() not in r.output and b"[secret:API_TOKEN]" in r.output
    assert r.logs == ["token is [secret:API_TOKEN]"]
    r = run_step(js("export function run(x) { throw new Error('leaked ' + x) }"), secret.encode(), ctx, ())
    assert secret not in r.error and "[secret:API_TOKEN]" in r.error
    # binary output around a secret keeps every other byte
    r = run_step(wat(tmp_path, WAT_UPPER), b"\xff\x00" + secret.encode() + b"\xfe", make_ctx(tmp_path, secrets=Secrets({"UP": secret.upper()})), ())
    assert r.output == b"\xff\x00[secret:UP]\xfe"


def test_only_the_step_dir_is_visible_and_env_is_empty(tmp_path):
    ctx = make_ctx(tmp_path)
    (tmp_path / "outside.txt").write_text("host file")
    ctx.step_dir.mkdir(parents=True)
    os.symlink("/etc/passwd", ctx.step_dir / "link-abs")
    os.symlink("../../outside.txt", ctx.step_dir / "link-rel")
    src = """import * as std from 'qjs:std'; import * as os from 'qjs:os';
      const f = std.open('notes.txt', 'w'); f.puts('kept'); f.close();
      const tries = ['/etc/passwd', '../outside.txt', '/../outside.txt', '/.wb-host/../outside.txt', 'link-abs', 'link-rel'].map((p) => std.open(p, 'r') === null);
      const [dir] = os.readdir('/');
      print(JSON.stringify({tries, env: std.getenviron(), dir}));"""
    r = run_step(js(src), b"", ctx, ())
    assert r.ok, r.error
    got = json.loads(r.output)
    assert got["tries"] == [True] * 6
    assert got["env"] == {}
    assert sorted(x for x in got["dir"] if x not in (".", "..")) == ["link-abs", "link-rel", "notes.txt"]
    assert (ctx.step_dir / "notes.txt").read_text() == "kept"
    # the per-step host channel is gone afterwards
    import tempfile

    assert not [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"wb-step-host-{os.getpid()}-")]


def test_digest_style_pair_run_then_run_raw(tmp_path):
    # the seed's shape: a root `run()` that produces raw data, then `run(raw)` that summarises it
    ctx1, ctx2 = make_ctx(tmp_path, "fetch"), make_ctx(tmp_path, "summarize")
    fetch = js("export async function run() { return { items: [{title: 'a', n: 3}, {title: 'b', n: 4}] }; }")
    summarize = js("export function run(raw) { return raw.items.map((i) => `${i.title}=${i.n}`).join(', ') + ` (total ${raw.items.reduce((s, i) => s + i.n, 0)})`; }")
    r1 = run_step(fetch, b"", ctx1, ())
    assert r1.ok, r1.error
    r2 = run_step(summarize, r1.output, ctx2, ())
    assert r2.ok, r2.error
    assert r2.output == b"a=3, b=4 (total 7)"


def test_local_executor_builds_and_runs(tmp_path):
    ctx = make_ctx(tmp_path)
    comps = [Component(name="j", lang="js", src="export function run(x) { return {twice: x * 2}; }"),
             Component(name="w", lang="wat", src=WAT_UPPER),
             Component(name="bad", lang="wat", src="(module (func $f (result i32)))"),
             Component(name="nolane", lang="cobol", src="DISPLAY 'x'.")]

    async def go():
        ex = LocalExecutor()
        try:
            return [await ex.run(c, b"21", ctx) for c in comps]
        finally:
            await ex.aclose()

    j, w, bad, nolane = trio.run(go)
    assert j.ok and json.loads(j.output) == {"twice": 42} and j.lane == "js"
    assert w.ok and w.output == b"21" and w.lane == "wat"
    assert not bad.ok and bad.code == "build_failed" and bad.error
    assert not nolane.ok and nolane.code == "lane_unavailable" and "cobol" in nolane.error


def test_local_executor_under_asyncio(tmp_path):
    import asyncio

    async def go():
        ex = LocalExecutor(max_parallel=2)
        comp = Component(name="j", lang="js", src="export async function run(x) { return x.map((v) => v + 1); }")
        return await asyncio.gather(*(ex.run(comp, json.dumps([i]).encode(), make_ctx(tmp_path, f"a{i}")) for i in range(3)))

    assert [r.output for r in asyncio.run(go())] == [b"[1]", b"[2]", b"[3]"]


def test_local_executor_runs_at_most_max_parallel(tmp_path):
    sleeper = Component(name="nap", lang="js", src="import * as os from 'qjs:os'; export function run() { os.sleep(300); return 'up'; }")

    async def go(n):
        ex = LocalExecutor(max_parallel=n)
        out = []

        async def one(i):
            out.append(await ex.run(sleeper, b"", make_ctx(tmp_path, f"p{n}-{i}")))

        t = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
        return out, time.monotonic() - t

    out, took = trio.run(go, 2)
    assert [r.output for r in out] == [b"up"] * 4
    assert took >= 0.55, took  # two waves of two 300 ms naps


def test_a_rust_panic_is_a_trap_that_shows_the_panic_message(tmp_path):
    # through the real rust lane (W1's build), as a workflow runs it
    ctx = make_ctx(tmp_path)
    comp = Component(name="p", lang="rust", src='fn main() { let v: Vec<u8> = Vec::new(); if v.is_empty() { panic!("no rows in {}", "feed"); } }')

    async def go():
        return await LocalExecutor().run(comp, b"", ctx)

    r = trio.run(go)
    assert r.code == "trap", (r.code, r.error)
    lines = r.error.splitlines()
    assert lines[0] == "trap: wasm trap: wasm `unreachable` instruction executed"
    assert "no rows in feed" in lines[1]
