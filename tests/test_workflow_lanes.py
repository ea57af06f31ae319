"""Language lanes and the build cache (workbooks.workflow.build): every lane builds a filter that
really runs under wasmtime (WASI stdin → stdout, run here, not through the step executor), a bad
source fails with the compiler's own words, a second build starts no compiler, the key follows
every input, `:dir` builds stay inside the tree, and concurrent builders compile once.

Compilers only run inside the build sandbox (bubblewrap), so a logging WB_BWRAP sees every
compiler run; fake toolchains (WB_RUSTC) stand in for a hanging or talkative compiler. Zig's global cache (wasi-libc, compiler-rt: ~40 s to build
the first time on this machine) is kept in pytest's cache dir, so only the first run ever pays it.
"""

from __future__ import annotations

import json
import os
import random
import stat
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from workbooks.workflow.build import BuildError, build, lanes_status
from workbooks.workflow.lanes.base import MESSAGE_MAX
from workbooks.workflow.lanes.zig import zig_binary
from workbooks.workflow.types import Component

ROOT = Path(__file__).resolve().parent.parent
RUSTC = "/usr/bin/rustc"

UPPER_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32) (local $i i32) (local $c i32)
    (block $done
      (loop $read
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $i (i32.const 0))
        (block $up_done
          (loop $up
            (br_if $up_done (i32.ge_u (local.get $i) (local.get $n)))
            (local.set $c (i32.load8_u (i32.add (i32.const 64) (local.get $i))))
            (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
              (then (i32.store8 (i32.add (i32.const 64) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $up)))
        (i32.store (i32.const 16) (i32.const 64))
        (i32.store (i32.const 20) (local.get $n))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (br $read)))))
"""

UPPER_C = r"""
#include <stdio.h>
#include <ctype.h>
int main(void) { int c; while ((c = getchar()) != EOF) putchar(toupper(c)); return 0; }
"""

UPPER_ZIG = """
const std = @import("std");
pub fn main(init: std.process.Init) !void {
    const io = init.io;
    var buf: [4096]u8 = undefined;
    while (true) {
        const n = std.Io.File.stdin().readStreaming(io, &.{&buf}) catch |e| switch (e) {
            error.EndOfStream => break,
            else => return e,
        };
        if (n == 0) break;
        for (buf[0..n]) |*c| c.* = std.ascii.toUpper(c.*);
        try std.Io.File.stdout().writeStreamingAll(io, buf[0..n]);
    }
}
"""

UPPER_RUST = """
use std::io::{Read, Write};
fn main() {
    let mut s = Vec::new();
    std::io::stdin().read_to_end(&mut s).unwrap();
    std::io::stdout().write_all(&s.to_ascii_uppercase()).unwrap();
}
"""

FILTERS = {"wat": UPPER_WAT, "c": UPPER_C, "zig": UPPER_ZIG, "rust": UPPER_RUST}

BROKEN = {  # (source, words the compiler's own message must contain)
    "wat": ("(module (func (export \"_start\") (i32.add)", ["expected", "<anon>"]),
    "c": ("int main(void) { return undefined_thing; }\n", ["main.c:1", "undefined_thing", "error"]),
    "zig": ("pub fn main() void { return undefined_thing; }\n", ["main.zig:1", "undefined_thing", "error"]),
    "rust": ("fn main() { let x: u32 = undefined_thing; }\n", ["src/main.rs:1", "undefined_thing", "error"]),
}


@pytest.fixture(autouse=True)
def zig_global_cache():
    # conftest sets WB_ZIG_CACHE_DIR for the whole session (and every service a test starts), so
    # zig builds its C library once per machine, not once per test
    assert os.environ.get("WB_ZIG_CACHE_DIR")


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def comp(lang: str, src: str, **kw) -> Component:
    return Component(name=f"{lang}-filter", lang=lang, src=src, **kw)


def run_wasi(wasm: Path, data: bytes, tmp: Path) -> bytes:
    """Run a WASI command with `data` on stdin; its stdout (exit status 0 required)."""
    inp, out = tmp / "stdin.bin", tmp / "stdout.bin"
    inp.write_bytes(data)
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    cfg = wasmtime.WasiConfig()
    cfg.stdin_file = str(inp)
    cfg.stdout_file = str(out)
    store.set_wasi(cfg)
    inst = linker.instantiate(store, wasmtime.Module.from_file(engine, str(wasm)))
    try:
        inst.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        assert e.code == 0
    return out.read_bytes()


def random_text(n: int = 3000) -> bytes:
    rnd = random.Random()
    return "".join(rnd.choice(string.ascii_letters + string.digits + " \n.,") for _ in range(n)).encode()


def sandbox_spy(tmp: Path, *, before: str = "") -> Path:
    """A WB_BWRAP that logs each sandboxed command (one line per compiler run) and runs the real
    bubblewrap: compilers only ever start inside the sandbox, so this sees every one."""
    log = tmp / "sandbox.log"
    script = tmp / "bwrap-spy"
    script.write_text(f"#!/bin/sh\necho \"$*\" >> '{log}'\n{before}\nexec /usr/bin/bwrap \"$@\"\n")
    script.chmod(0o755)
    return log


def compiles(log: Path) -> list[str]:
    """The logged sandbox runs that compiled something (not the one-time check that bwrap works)."""
    if not log.exists():
        return []
    return [l for l in log.read_text().splitlines() if not l.rstrip().endswith("/usr/bin/true")]


def fake_tool(tmp: Path, name: str, body: str, version: str = "rustc 1.63.0 (fake)") -> Path:
    script = tmp / name
    script.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && {{ echo '{version}'; exit 0; }}\n{body}\n")
    script.chmod(0o755)
    return script


def processes_with(argv: list[str]) -> list[int]:
    needle = "\0".join(argv).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(needle):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def leftovers(cache_dir: Path) -> list[str]:
    """Anything in the cache besides finished modules, lock files and zig's cache."""
    out = []
    for p in cache_dir.rglob("*"):
        rel = p.relative_to(cache_dir)
        if rel.parts[0] in (".locks", "zig") or (p.suffix == ".wasm" and p.parent == cache_dir) or p == cache_dir / ".work":
            continue
        out.append(str(rel))
    return out


def gone(pid: int, within: float = 5.0) -> bool:
    """The process has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------- lanes


def test_every_installed_lane_is_reported_with_its_toolchain():
    st = lanes_status()
    assert set(st) == {"js", "wat", "c", "zig", "rust", "agent"}
    for lang in ("js", "wat", "c", "zig", "rust"):  # this machine has them all (make test installs rust)
        assert st[lang]["available"] is True, st[lang]
        assert st[lang]["toolchain"] and st[lang]["why"] is None
    assert st["rust"]["toolchain"].startswith("rustc 1.")
    assert "zig" in st["c"]["toolchain"]
    assert st["agent"] == {"available": False, "toolchain": None,
                           "why": "lang=agent runs through the agent loop, not as a wasm build"}


@pytest.mark.parametrize("lang", ["wat", "c", "zig", "rust"])
def test_each_lane_builds_a_filter_that_runs(lang, cache, tmp_path):
    b = build(comp(lang, FILTERS[lang]), cache_dir=cache)
    assert (b.lang, b.kind, b.cached, b.js) == (lang, "command", False, None)
    assert b.wasm == cache / f"{b.key}.wasm" and len(b.key) == 64
    data = random_text()
    assert run_wasi(b.wasm, data, tmp_path) == data.upper()
    assert leftovers(cache) == []
    again = build(comp(lang, FILTERS[lang]), cache_dir=cache)
    assert (again.cached, again.key, again.wasm) == (True, b.key, b.wasm)
    assert run_wasi(again.wasm, b"warm", tmp_path) == b"WARM"


def test_wat_reactor_and_a_module_that_cannot_run(cache):
    b = build(comp("wat", '(module (func (export "run") (param i32 i32) (result i32) (local.get 0)) (memory (export "memory") 1))'),
              cache_dir=cache)
    assert b.kind == "reactor"
    with pytest.raises(BuildError) as e:
        build(comp("wat", '(module (func (export "main")))'), cache_dir=cache)
    assert e.value.code == "build_failed" and "neither `_start`" in e.value.message
    with pytest.raises(BuildError) as e:  # parses, but does not validate (wat2wasm alone would accept it)
        build(comp("wat", '(module (func (export "_start") (result i32) (i64.const 1)))'), cache_dir=cache)
    assert e.value.code == "build_failed" and "type mismatch" in e.value.message
    assert leftovers(cache) == [] and not list(cache.glob("*.wasm"))[1:]


def test_js_is_the_source_as_written(cache, tmp_path):
    src = "export function run(raw) { return raw.toUpperCase(); }\n"
    b = build(comp("js", src), cache_dir=cache)
    assert (b.kind, b.js, b.wasm, b.cached) == ("js", src, None, True)
    assert build(comp("js", src + " "), cache_dir=cache).key != b.key
    tree = tmp_path / "tree"
    (tree / "jsdir").mkdir(parents=True)
    (tree / "jsdir" / "index.js").write_text("export function run(x) { return x; }")
    d = build(comp("js", "", dir="jsdir"), cache_dir=cache, tree=tree)
    assert d.js == "export function run(x) { return x; }"


# ------------------------------------------------------------------------------- failing builds


@pytest.mark.parametrize("lang", ["wat", "c", "zig", "rust"])
def test_each_lanes_failing_build_carries_the_compilers_message(lang, cache):
    src, words = BROKEN[lang]
    with pytest.raises(BuildError) as e:
        build(comp(lang, src), cache_dir=cache)
    assert e.value.code == "build_failed"
    for w in words:
        assert w in e.value.message, e.value.message
    assert str(cache) not in e.value.message  # the temp dir is not shown
    assert not list(cache.glob("*.wasm")) and leftovers(cache) == []


def test_a_flood_of_errors_is_cut_at_4_kb(cache):
    long = "x" * 200  # clang stops after 20 errors: long names make those 20 well over 4 KB
    src = "\n".join(f"int f{i}(void) {{ return nope{i}{long}; }}" for i in range(400)) + "\nint main(void){return 0;}\n"
    with pytest.raises(BuildError) as e:
        build(comp("c", src), cache_dir=cache)
    assert e.value.code == "build_failed" and "nope0" in e.value.message
    assert 3000 < len(e.value.message.encode()) <= MESSAGE_MAX


@pytest.mark.parametrize("lang", ["python", "cobol", "JS", ""])
def test_unknown_lang_is_lane_unavailable(lang, cache):
    with pytest.raises(BuildError) as e:
        build(comp(lang, "print(1)"), cache_dir=cache)
    assert e.value.code == "lane_unavailable"
    assert ("no lane for lang=" in e.value.message and "c, js, rust, wat, zig" in e.value.message) if lang else \
        "no source block" in e.value.message


def test_agent_is_lane_unavailable(cache):
    with pytest.raises(BuildError) as e:
        build(comp("agent", "summarize the feed"), cache_dir=cache)
    assert (e.value.code, e.value.message) == ("lane_unavailable", "lang=agent runs through the agent loop, not as a wasm build")


def test_a_missing_toolchain_says_what_to_install(cache, monkeypatch):
    monkeypatch.setenv("WB_RUSTC", "/nonexistent/rustc")
    monkeypatch.setenv("WB_ZIG", "/nonexistent/zig")
    st = lanes_status()
    assert st["rust"]["available"] is False and "apt-get install -y rustc libstd-rust-dev-wasm32 lld-14" in st["rust"]["why"]
    assert st["c"]["available"] is False and "ziglang" in st["c"]["why"]
    for lang, needle in (("rust", "rustc (/nonexistent/rustc)"), ("c", "pip install ziglang"), ("zig", "needs zig")):
        with pytest.raises(BuildError) as e:
            build(comp(lang, FILTERS[lang]), cache_dir=cache)
        assert e.value.code == "lane_unavailable" and needle in e.value.message
    assert lanes_status()["wat"]["available"] is True
    monkeypatch.delenv("WB_RUSTC")
    monkeypatch.delenv("WB_ZIG")
    monkeypatch.setenv("WB_BWRAP", "/nonexistent/bwrap")
    st = lanes_status()
    for lang in ("c", "zig", "rust"):
        assert st[lang]["available"] is False and "apt-get install -y bubblewrap" in st[lang]["why"]
        with pytest.raises(BuildError) as e:
            build(comp(lang, FILTERS[lang]), cache_dir=cache)
        assert e.value.code == "lane_unavailable" and "bubblewrap" in e.value.message
    assert st["wat"]["available"] and st["js"]["available"]


# ------------------------------------------------------------------------------------- the cache


def test_a_cache_hit_starts_no_compiler(cache, tmp_path, monkeypatch):
    log = sandbox_spy(tmp_path)
    monkeypatch.setenv("WB_BWRAP", str(tmp_path / "bwrap-spy"))
    cold = {lang: build(comp(lang, FILTERS[lang]), cache_dir=cache) for lang in ("rust", "c")}
    ran = compiles(log)
    assert len(ran) == 2 and "rustc" in ran[0] and "zig cc" in ran[1]
    calls = log.read_text()
    for lang in ("rust", "c"):
        t0 = time.perf_counter()
        warm = build(comp(lang, FILTERS[lang]), cache_dir=cache)
        assert time.perf_counter() - t0 < 1.0
        assert (warm.cached, warm.key) == (True, cold[lang].key)
    assert log.read_text() == calls
    # a fresh process compiles nothing either
    code = ("import sys; from pathlib import Path; from workbooks.workflow.build import build;"
            "from workbooks.workflow.types import Component;"
            f"b = build(Component(name='x', lang='rust', src={UPPER_RUST!r}), cache_dir=Path({str(cache)!r}));"
            "print(b.cached, b.key)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "WB_BWRAP": str(tmp_path / "bwrap-spy")})
    assert out.stdout.split() == ["True", cold["rust"].key], out.stderr
    assert len(compiles(log)) == 2


def test_the_key_follows_source_deps_and_toolchain(cache, tmp_path, monkeypatch):
    base = build(comp("rust", UPPER_RUST), cache_dir=cache)
    changed = build(comp("rust", UPPER_RUST.replace("to_ascii_uppercase", "to_ascii_lowercase")), cache_dir=cache)
    assert changed.key != base.key and changed.cached is False
    assert run_wasi(changed.wasm, b"MiXeD", tmp_path) == b"mixed"
    assert run_wasi(base.wasm, b"MiXeD", tmp_path) == b"MIXED"
    with_deps = build(comp("rust", UPPER_RUST, deps=("left-pad",)), cache_dir=cache)
    assert with_deps.key not in (base.key, changed.key) and with_deps.cached is False
    # another toolchain version: another key (a wrapper that reports a different version)
    fake = fake_tool(tmp_path, "rustc-next", f'exec {RUSTC} "$@"', version="rustc 1.99.0 (fake)")
    monkeypatch.setenv("WB_RUSTC", str(fake))
    other = build(comp("rust", UPPER_RUST), cache_dir=cache)
    assert other.key != base.key and other.cached is False
    assert lanes_status()["rust"]["toolchain"].startswith("rustc 1.99.0 (fake)")


def test_a_damaged_cache_entry_is_rebuilt(cache, tmp_path):
    b = build(comp("wat", UPPER_WAT), cache_dir=cache)
    b.wasm.write_bytes(b"\0asm garbage")
    again = build(comp("wat", UPPER_WAT), cache_dir=cache)
    assert again.cached is False and again.wasm == b.wasm
    assert run_wasi(again.wasm, b"ok", tmp_path) == b"OK"


def test_concurrent_builders_of_one_key_compile_once(cache, tmp_path):
    # three processes, two threads each, a compiler slow enough for all of them to meet
    log = sandbox_spy(tmp_path, before="sleep 1")
    code = ("import threading, json; from pathlib import Path; from workbooks.workflow.build import build;"
            "from workbooks.workflow.types import Component;"
            f"c = Component(name='x', lang='rust', src={UPPER_RUST!r}); res = [];"
            f"ts = [threading.Thread(target=lambda: res.append(build(c, cache_dir=Path({str(cache)!r})).to_dict())) for _ in range(2)];"
            "[t.start() for t in ts]; [t.join() for t in ts]; print(json.dumps(res))")
    env = {**os.environ, "WB_BWRAP": str(tmp_path / "bwrap-spy")}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results += json.loads(out)
    assert len(results) == 6 and len({r["key"] for r in results}) == 1 and len({r["wasm"] for r in results}) == 1
    assert sum(not r["cached"] for r in results) == 1
    assert len(compiles(log)) == 1
    assert run_wasi(Path(results[0]["wasm"]), b"abc", tmp_path) == b"ABC"
    assert leftovers(cache) == []


def test_compilers_get_a_clean_environment_and_a_deadline(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("WB_SECRET_TOKEN", "hunter2-should-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    monkeypatch.setenv("WB_RUSTC", str(fake_tool(tmp_path, "rustc-env", "env; exit 1")))
    with pytest.raises(BuildError) as e:
        build(comp("rust", UPPER_RUST), cache_dir=cache)
    env = e.value.message
    assert "PATH=/usr/bin:/bin" in env and "HOME=" in env
    assert "hunter2" not in env and "sk-should" not in env and "OPENAI" not in env
    # a compiler that hangs (and starts a child that would outlive it) is stopped, children too
    monkeypatch.setenv("WB_RUSTC", str(fake_tool(tmp_path, "rustc-hang", "sleep 3007 &\necho compiling...\nwait")))
    monkeypatch.setenv("WB_BUILD_TIMEOUT_S", "1.5")
    t0 = time.perf_counter()
    with pytest.raises(BuildError) as e:
        build(comp("rust", UPPER_RUST), cache_dir=cache)
    assert time.perf_counter() - t0 < 10
    assert e.value.code == "build_failed" and "did not finish within 1.5 s" in e.value.message and "compiling..." in e.value.message
    deadline = time.monotonic() + 5
    while processes_with(["sleep", "3007"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in processes_with(["sleep", "3007"]) if not gone(p, 0)] == []
    assert leftovers(cache) == []


def test_a_compiler_sees_no_file_outside_its_build(cache, tmp_path):
    secret = tmp_path / "other-tenant" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOPSECRET-42\n")
    probes = {
        "c": f'#include "{secret}"\nint main(void){{return 0;}}\n',
        "rust": f'fn main() {{ print!("{{}}", include_str!("{secret}")); }}\n',
        "zig": f'const s = @embedFile("{secret}");\npub fn main() void {{ _ = s; }}\n',
    }
    for lang, src in probes.items():
        with pytest.raises(BuildError) as e:
            build(comp(lang, src), cache_dir=cache)
        assert e.value.code == "build_failed" and "TOPSECRET" not in e.value.message, (lang, e.value.message)
    assert not list(cache.glob("*.wasm"))


# ------------------------------------------------------------------------------------ :dir builds


def make_tree(tmp: Path) -> Path:
    tree = tmp / "tree"
    crate = tree / "tools" / "shout"
    (crate / "src").mkdir(parents=True)
    (crate / "src" / "main.rs").write_text(
        "mod util;\nuse std::io::{Read, Write};\nfn main() { let mut s = Vec::new(); std::io::stdin().read_to_end(&mut s).unwrap();"
        " std::io::stdout().write_all(&util::shout(&s)).unwrap(); }\n")
    (crate / "src" / "util.rs").write_text("pub fn shout(s: &[u8]) -> Vec<u8> { let mut v = s.to_ascii_uppercase(); v.push(b'!'); v }\n")
    (crate / "target").mkdir()
    (crate / "target" / "junk.rlib").write_bytes(b"old build output")
    cdir = tree / "tools" / "cfilter"
    cdir.mkdir(parents=True)
    (cdir / "main.c").write_text('#include <stdio.h>\n#include "pre.h"\nint main(void){int c; fputs(PREFIX, stdout);'
                                 " while((c=getchar())!=EOF) putchar(c); return 0;}\n")
    (cdir / "pre.h").write_text('#define PREFIX "> "\n')
    return tree


def test_dir_builds_read_every_file_and_key_on_them(cache, tmp_path):
    tree = make_tree(tmp_path)
    b = build(comp("rust", "", dir="tools/shout"), cache_dir=cache, tree=tree)
    assert run_wasi(b.wasm, b"hey", tmp_path) == b"HEY!"
    (tree / "tools/shout/target/junk.rlib").write_bytes(b"another build output")  # not read: same key
    assert build(comp("rust", "", dir="tools/shout"), cache_dir=cache, tree=tree).cached is True
    util = tree / "tools/shout/src/util.rs"
    util.write_text(util.read_text().replace("b'!'", "b'?'"))  # not the entry file: still a new key
    b2 = build(comp("rust", "", dir="tools/shout"), cache_dir=cache, tree=tree)
    assert b2.key != b.key and b2.cached is False and run_wasi(b2.wasm, b"hey", tmp_path) == b"HEY?"
    c = build(comp("c", "", dir="./tools/cfilter/"), cache_dir=cache, tree=tree)
    assert run_wasi(c.wasm, b"quoted", tmp_path) == b"> quoted"
    (tree / "tools/cfilter/pre.h").write_text('#define PREFIX "| "\n')
    c2 = build(comp("c", "", dir="tools/cfilter"), cache_dir=cache, tree=tree)
    assert c2.key != c.key and run_wasi(c2.wasm, b"x", tmp_path) == b"| x"
    # a folder without the entry file builds the block's text as the entry
    (tree / "zdir").mkdir()
    z = build(comp("zig", UPPER_ZIG, dir="zdir"), cache_dir=cache, tree=tree)
    assert run_wasi(z.wasm, b"zig", tmp_path) == b"ZIG"
    with pytest.raises(BuildError) as e:
        build(comp("c", "", dir="zdir"), cache_dir=cache, tree=tree)
    assert e.value.code == "build_failed" and "has no main.c" in e.value.message


def test_dir_escapes_are_refused_before_anything_compiles(cache, tmp_path, monkeypatch):
    tree = make_tree(tmp_path)
    secret = tmp_path / "secret.rs"
    secret.write_text("pub fn shout(_: &[u8]) -> Vec<u8> { b\"stolen\".to_vec() }\n")
    outside = tmp_path / "outside"
    (outside / "src").mkdir(parents=True)
    (outside / "src" / "main.rs").write_text(UPPER_RUST)
    (tree / "linked").symlink_to(outside)
    (tree / "tools/shout/src/util.rs").unlink()
    (tree / "tools/shout/src/util.rs").symlink_to(secret)
    fifo_dir = tree / "fifo"
    fifo_dir.mkdir()
    (fifo_dir / "main.c").write_text(UPPER_C)
    os.mkfifo(fifo_dir / "pipe")
    log = sandbox_spy(tmp_path)
    monkeypatch.setenv("WB_BWRAP", str(tmp_path / "bwrap-spy"))
    cases = {"../outside": "escapes", str(outside): "escapes", "linked": "escapes", "tools/../../outside": "escapes",
             "tools/shout": "symlink out of the workbook's tree", "nope": "no such folder",
             "tools/shout/src/main.rs": "not a folder"}
    for d, needle in cases.items():
        with pytest.raises(BuildError) as e:
            build(comp("rust", UPPER_RUST, dir=d), cache_dir=cache, tree=tree)
        assert e.value.code == "build_failed" and needle in e.value.message, (d, e.value.message)
    t0 = time.perf_counter()
    with pytest.raises(BuildError) as e:
        build(comp("c", "", dir="fifo"), cache_dir=cache, tree=tree)
    assert "pipe is not a regular file" in e.value.message and time.perf_counter() - t0 < 5
    with pytest.raises(BuildError) as e:
        build(comp("rust", "", dir="tools/shout"), cache_dir=cache, tree=None)
    assert "needs the workbook's tree" in e.value.message
    assert compiles(log) == [] and not list(cache.glob("*.wasm"))


def test_odd_names_and_text_do_not_crash_the_build(cache, tmp_path):
    tree = make_tree(tmp_path)
    odd = os.fsencode(str(tree / "tools/cfilter")) + b"/notes-\xff.txt"
    with open(odd, "wb") as f:
        f.write(b"not utf-8 named")
    c = build(comp("c", "", dir="tools/cfilter"), cache_dir=cache, tree=tree)
    with open(odd, "wb") as f:
        f.write(b"changed")
    assert build(comp("c", "", dir="tools/cfilter"), cache_dir=cache, tree=tree).key != c.key
    os.symlink("/etc/passwd", os.fsencode(str(tree / "tools/cfilter")) + b"/link-\xfe")
    with pytest.raises(BuildError) as e:
        build(comp("c", "", dir="tools/cfilter"), cache_dir=cache, tree=tree)
    json.dumps(e.value.to_dict(), ensure_ascii=False).encode()  # the message serializes
    assert "link-" in e.value.message and "symlink out" in e.value.message
    with pytest.raises(BuildError) as e:  # a lone surrogate in the block (JSON allows one)
        build(comp("c", "int main(void) { return \ud800; }\n"), cache_dir=cache)
    assert e.value.code == "build_failed"
    json.dumps(e.value.to_dict(), ensure_ascii=False).encode()


def test_leftovers_of_a_killed_build_are_swept(cache, tmp_path):
    (cache / ".work" / "rust-dead").mkdir(parents=True)
    (cache / ".work" / "rust-dead" / "out.wasm").write_bytes(b"half")
    (cache / ".0123abcd-x.tmp").write_bytes(b"half a module")
    (cache / ".work" / "rust-live").mkdir()
    old = time.time() - 3600
    for p in (cache / ".work" / "rust-dead", cache / ".0123abcd-x.tmp"):
        os.utime(p, (old, old))
    build(comp("rust", UPPER_RUST), cache_dir=cache)
    assert sorted(p.name for p in (cache / ".work").iterdir()) == ["rust-live"]
    assert not (cache / ".0123abcd-x.tmp").exists()
