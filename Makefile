# The two commands: `make serve` and `make test`. Everything else is a helper.
.PHONY: serve test setup wasm wasm-check bench bench-quick clean

serve:
	bash ops/setup.sh
	.venv/bin/wbx serve

test:
	bash ops/test.sh

setup:
	bash ops/setup.sh --test

# Rebuild the kernel (Debian's rustc 1.63, wasm32) and copy it into the package.
wasm:
	bash ops/build_kernel.sh

# Rebuild and fail if the bytes differ from the committed oql.wasm (CI runs this).
wasm-check:
	bash ops/build_kernel.sh --check

bench-quick: setup
	.venv/bin/python load/kernel_bench.py --quick

bench: setup
	.venv/bin/python load/kernel_bench.py

clean:
	rm -rf .venv kernel/target .pytest_cache build *.egg-info
