#!/usr/bin/env bash
# The whole test suite: the kernel's native unit tests, then pytest on the real wasm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash ops/setup.sh --test
echo "== kernel: cargo test (native, Debian rustc $(/usr/bin/rustc --version | cut -d' ' -f2))"
(cd kernel && RUSTC=/usr/bin/rustc /usr/bin/cargo test --quiet --release 2>&1)
echo "== shellbox: cargo test (the agent shell's commands, native)"
(cd shellbox && RUSTC=/usr/bin/rustc /usr/bin/cargo test --quiet --release 2>&1)
echo "== python: pytest"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
rc=$?
set -e
if [ $rc = 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit $rc
