#!/usr/bin/env bash
# Build oql.wasm reproducibly with Debian's rustc 1.63 for wasm32-unknown-unknown.
# Usage: ops/build_kernel.sh [OUT]   (default: workbooks/oql/oql.wasm)
#        ops/build_kernel.sh --check (rebuild and fail if the committed bytes differ)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo_bin="${WB_CARGO:-/usr/bin/cargo}"
export RUSTC="${WB_RUSTC:-/usr/bin/rustc}"
if [ ! -x "$cargo_bin" ] || [ ! -d /usr/lib/rustlib/wasm32-unknown-unknown ]; then
  echo "build_kernel: needs Debian's rustc/cargo with the wasm32 std: apt-get install -y rustc cargo libstd-rust-dev-wasm32" >&2
  exit 3
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/kernel/target}"
export RUSTFLAGS="--remap-path-prefix=$root/kernel=/oql --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo -C target-feature=+bulk-memory"
export SOURCE_DATE_EPOCH=0
(cd "$root/kernel" && "$cargo_bin" build --quiet --release --lib --target wasm32-unknown-unknown)
built="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/oql.wasm"
committed="$root/workbooks/oql/oql.wasm"
if [ "${1:-}" = "--check" ]; then
  if cmp -s "$built" "$committed"; then
    echo "oql.wasm: rebuilt bytes match the committed file ($(sha256sum "$committed" | cut -c1-16))"
  else
    echo "oql.wasm: rebuilt bytes DIFFER from the committed file: run 'make wasm' and commit" >&2
    echo "  committed $(sha256sum "$committed" | cut -c1-16)  rebuilt $(sha256sum "$built" | cut -c1-16)" >&2
    exit 1
  fi
else
  out="${1:-$committed}"
  cp "$built" "$out"
  echo "oql.wasm: $(wc -c < "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16) -> $out"
fi
