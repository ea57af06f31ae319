"""The control plane (authenticated API, 127.0.0.1:4000) and the code both planes share.

Modules: `app` (routes), `deploy` (validate + render through the pool, then commit and index,
all or nothing), `oql` (kernel calls: the pool, or the in-process kernel), `httperrors` (one
JSON error shape), `asgi_body` (keep hypercorn's HTTP/1.1 connections honest under quart-trio),
`runtime` (one plane process on an SO_REUSEPORT socket), `specs` (the planes as supervisor
children), `first_run` (tenant `dev` + the demo), `openapi`, `metrics`, `trust_routes`,
`launch` (start/stop planes for tests and benchmarks).
"""
