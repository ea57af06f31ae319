# The two commands: `make serve` and `make test`. Everything else is a helper.
.PHONY: serve test setup wasm wasm-check bench bench-quick clean

# The set-up talks on stderr, so stdout carries only the service's JSON log lines.
serve:
	@bash ops/setup.sh >&2
	@.venv/bin/wbx serve

test:
	bash ops/test.sh

setup:
	bash ops/setup.sh --test

# Rebuild the kernel (Debian's rustc 1.63, wasm32) and the agent shell's commands (wasm32-wasi)
# and copy them into the package.
wasm:
	bash ops/build_kernel.sh
	bash shellbox/build.sh

# Rebuild and fail if the bytes differ from the committed oql.wasm / shellbox.wasm (CI runs this).
wasm-check:
	bash ops/build_kernel.sh --check
	bash shellbox/build.sh --check

# Benchmarks print tables and write JSON (and plots) to load/results/.
BENCHES := kernel_bench render_bench pool_bench http_bench supervisor_bench cli_bench durability_bench agent_bench workflow_bench loadtest_bench

bench-quick: setup
	for b in $(BENCHES); do [ ! -f load/$$b.py ] || .venv/bin/python load/$$b.py --quick || exit 1; done

bench: setup
	for b in $(BENCHES); do [ ! -f load/$$b.py ] || .venv/bin/python load/$$b.py || exit 1; done

clean:
	rm -rf .venv kernel/target shellbox/target .pytest_cache build *.egg-info
