"""The agent loop: an LLM drives sandboxed tools over a confined working directory.

Packages: `llm/` (the two wires), `shell/` (the WebAssembly shell), `tools/` (the eight base tools and
the brokered git hand), `loop.py` (the original's loop rules), `records.py` (_steps.jsonl,
_status.json, events.org), `runs.py` (run folders and ids), `runner.py` (the supervised `agents`
process), `definitions.py`/`toolkits.py` (agents and toolkits defined in Org).
"""
