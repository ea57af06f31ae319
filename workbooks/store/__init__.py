"""The SQLite index shared by the control and public planes (see db.py)."""

from workbooks.store.db import Principal, Store, db_path, hash_key, page_etag
from workbooks.store.templates import resolve_for_egress, resolve_for_page

__all__ = ["Store", "Principal", "db_path", "hash_key", "page_etag", "resolve_for_egress", "resolve_for_page"]
