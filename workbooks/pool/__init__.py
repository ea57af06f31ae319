"""The OQL worker pool: a broker, wasmtime workers, and the clients that reach them.

Clients: `from workbooks.pool.client import AsyncPoolClient, PoolClient, PoolError`.
"""
