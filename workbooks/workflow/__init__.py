"""Workflows: a workbook's `:workflow:` headlines compiled to WebAssembly and run as a DAG.

Modules: `types.py` (what every part shares), `build.py` + `lanes/` (source → wasm, content-addressed
cache), `step.py` (one step under wasmtime with its limits and capabilities), `engine.py` (the DAG in
waves, run records), `todo.py` (TODO-outline workflows), `pool_exec.py` + `worker.py` (steps in the
pool's runner workers), `scheduler.py` (SCHEDULE and SCHEDULED), `telemetry/` (run index, routes).
"""
