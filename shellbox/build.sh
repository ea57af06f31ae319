#!/usr/bin/env bash
# Build shellbox.wasm reproducibly with Debian's rustc 1.63 for wasm32-wasi (the kernel's recipe:
# ops/build_kernel.sh). Usage: shellbox/build.sh [OUT]  (default: workbooks/agent/shell/shellbox.wasm)
#                              shellbox/build.sh --check (rebuild; fail if the committed bytes differ)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo_bin="${WB_CARGO:-/usr/bin/cargo}"
export RUSTC="${WB_RUSTC:-/usr/bin/rustc}"
if [ ! -x "$cargo_bin" ] || [ ! -d /usr/lib/rustlib/wasm32-wasi ]; then
  echo "build_shellbox: needs Debian's rustc/cargo with the wasm32-wasi std: apt-get install -y rustc cargo libstd-rust-dev-wasm32 lld-14" >&2
  exit 3
fi
export CARGO_TARGET_DIR="${SHELLBOX_TARGET_DIR:-$root/shellbox/target}"
export RUSTFLAGS="--remap-path-prefix=$root/shellbox=/shellbox --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo -C target-feature=+bulk-memory"
export SOURCE_DATE_EPOCH=0
(cd "$root/shellbox" && "$cargo_bin" build --quiet --release --target wasm32-wasi)
built="$CARGO_TARGET_DIR/wasm32-wasi/release/shellbox.wasm"
committed="$root/workbooks/agent/shell/shellbox.wasm"
if [ "${1:-}" = "--check" ]; then
  if cmp -s "$built" "$committed"; then
    echo "shellbox.wasm: rebuilt bytes match the committed file ($(sha256sum "$committed" | cut -c1-16))"
  else
    echo "shellbox.wasm: rebuilt bytes DIFFER from the committed file: run 'make wasm' and commit" >&2
    echo "  committed $(sha256sum "$committed" 2>/dev/null | cut -c1-16)  rebuilt $(sha256sum "$built" | cut -c1-16)" >&2
    exit 1
  fi
else
  out="${1:-$committed}"
  cp "$built" "$out"
  echo "shellbox.wasm: $(wc -c < "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16) -> $out"
fi
