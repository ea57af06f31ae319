"""`wbx loadtest`: load-test a Workbooks deployment with coordinated-omission-correct latency.

The package is split by concern:

- `units`, `plan`: durations, rates and sizes as people write them; the run plan (TOML + flags),
  validated once, round-tripping through run.json (the API key never does).
- `schedule`: the global arrival sequence (uniform or Poisson, ramps and holds), shared by every
  generator process so N processes together send exactly what one would.
- `hist`: HDR histograms per second (the hot-path `Recorder`), exact merges across generators
  (`Merger`), percentiles, and the HdrHistogram interval log (`.hlog`).
- `thresholds`: `latency.p99<50ms`-style pass/fail expressions evaluated on run.json.
- `selfcheck`: the `Judge` that flags a run whose generator, not the server, was the bottleneck.
- engine, targets, coordinator, runner, report, scrape: the generator, the processes around it
  and what they write (see their own docstrings).
"""
