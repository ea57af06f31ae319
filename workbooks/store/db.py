"""The SQLite index: tenants, API keys (hashes only), workbooks, variables and secrets, domains.

WAL mode, one connection per thread and process (reconnects after fork), `BEGIN IMMEDIATE` for
every write so concurrent processes serialise on SQLite's own lock, and a busy timeout so they
wait instead of failing. Everything a plane needs to serve a page is in one row plus the page
files it names (`pagefiles`: the rendered page and its gzip, stored once outside the index), so
the public plane never renders per request.

Durable before acknowledged: `synchronous=FULL` (a committed transaction survives a power cut;
`WB_FSYNC=0`, test-only, sets OFF). Every write transaction first checks the free-space floor
(`fsutil.check_free_space`, 507) before it commits, when it changed anything, except the few
that must work on a full disk: the admin key at first start, key revocation, the reconciler's
bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from workbooks.errors import Conflict, NotFound, UsageError
from workbooks.fsutil import atomic_write, check_free_space, fsync_enabled, makedirs_durable
from workbooks.store.crypto import SecretBox, load_key
from workbooks.store.names import SCOPES, InvalidName, validate_var_key, validate_workbook_id
from workbooks.store.pagefiles import PageFiles

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
  name TEXT PRIMARY KEY,
  created_at REAL NOT NULL,
  head TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  prefix TEXT NOT NULL,
  scope TEXT NOT NULL,
  tenant TEXT,
  created_at REAL NOT NULL,
  revoked_at REAL
);
CREATE TABLE IF NOT EXISTS workbooks (
  tenant TEXT NOT NULL,
  id TEXT NOT NULL,
  source TEXT NOT NULL,
  fragment TEXT NOT NULL,
  page BLOB NOT NULL,
  page_gz BLOB NOT NULL,
  etag TEXT NOT NULL,
  headlines TEXT NOT NULL,
  meta TEXT NOT NULL,
  sha TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS workbooks_by_id ON workbooks (id, created_at);
CREATE TABLE IF NOT EXISTS vars (
  tenant TEXT NOT NULL,
  key TEXT NOT NULL,
  secret INTEGER NOT NULL,
  value BLOB NOT NULL,
  size INTEGER NOT NULL,
  updated_at REAL NOT NULL,
  PRIMARY KEY (tenant, key)
);
CREATE TABLE IF NOT EXISTS page_gc (
  ref TEXT PRIMARY KEY,
  since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
  tenant TEXT PRIMARY KEY,
  workbook TEXT NOT NULL,
  data TEXT NOT NULL,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
  host TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  workbook TEXT NOT NULL,
  created_at REAL NOT NULL
);
"""

KEY_PREFIX = "wbk_"


def hash_key(key: str) -> str:
    # Keys are 256 random bits: a fast hash is enough (nothing to brute-force), and lookup is by hash.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def page_etag(page: bytes) -> str:
    return '"' + hashlib.sha256(page).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's id, its scope and (for tenant keys) its tenant."""

    key_id: str
    scope: str
    tenant: str | None


ZLEVEL = 3  # ~60 MB/s on HTML: 1 ms per 50 KB fragment


def page_gc_grace_s() -> float:
    """How long an unreferenced page file stays (readers of the old row still find it)."""
    try:
        return max(0.0, float(os.environ.get("WB_PAGE_GC_GRACE_S", "60")))
    except ValueError:
        return 60.0


def _unz(blob: bytes | None, plain: str) -> str:
    """A compressed column's text, or the plain column of a row written before compression."""
    return plain if blob is None else zlib.decompress(blob).decode("utf-8")


def db_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / ".workbooks" / "index.db"


class Store:
    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.path = db_path(self.data_dir)
        makedirs_durable(self.path.parent, mode=0o700)
        self._local = threading.local()
        self._box: SecretBox | None = None
        self.pages = PageFiles(self.path.parent / "pages")
        self._init_schema()

    # -- connections --------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None or self._local.pid != os.getpid():
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA synchronous=FULL" if fsync_enabled() else "PRAGMA synchronous=OFF")
            c.row_factory = sqlite3.Row
            self._local.conn = c
            self._local.pid = os.getpid()
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None and self._local.pid == os.getpid():
            c.close()
        self._local.conn = None

    @contextmanager
    def tx(self, check_space: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction. One that changed rows is refused (rolled back, 507) when the data
        volume is below its free-space floor; one that changed nothing commits regardless (a
        start-up migration with nothing to migrate must not stop a plane on a full disk)."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            before = c.total_changes
            yield c
            if check_space and c.total_changes != before:
                check_free_space(self.path.parent)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    def _init_schema(self) -> None:
        c = self.conn()
        for attempt in range(50):
            try:
                if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    c.execute("PRAGMA journal_mode=WAL")
                c.executescript(SCHEMA)
                cols = {r[1] for r in c.execute("PRAGMA table_info(workbooks)")}
                if "page_ref" not in cols:  # pages moved out of the rows: a row names its page file
                    c.execute("ALTER TABLE workbooks ADD COLUMN page_ref TEXT")
                for col in ("fragment_z", "headlines_z"):  # zlib of fragment / headlines JSON (rows since then)
                    if col not in cols:
                        c.execute(f"ALTER TABLE workbooks ADD COLUMN {col} BLOB")
                c.execute("CREATE INDEX IF NOT EXISTS workbooks_by_page ON workbooks (page_ref)")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    def data_version(self) -> int:
        """Changes when any other connection commits: the public plane's cache check."""
        return self.conn().execute("PRAGMA data_version").fetchone()[0]

    def ping(self) -> bool:
        self.conn().execute("SELECT 1").fetchone()
        return True

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox(load_key(self.data_dir))
        return self._box

    # -- tenants ------------------------------------------------------------------------
    def create_tenant(self, name: str) -> dict:
        from workbooks.gitstore.tenant import validate_tenant

        validate_tenant(name)
        now = time.time()
        with self.tx() as c:
            if c.execute("SELECT 1 FROM tenants WHERE name=?", (name,)).fetchone():
                raise Conflict(f"tenant {name!r} already exists")
            c.execute("INSERT INTO tenants (name, created_at) VALUES (?, ?)", (name, now))
        return {"name": name, "created_at": now}

    def tenant_exists(self, name: str) -> bool:
        return self.conn().execute("SELECT 1 FROM tenants WHERE name=?", (name,)).fetchone() is not None

    def list_tenants(self) -> list[dict]:
        rows = self.conn().execute("SELECT name, created_at FROM tenants ORDER BY name").fetchall()
        return [dict(r) for r in rows]

    def set_head(self, tenant: str, sha: str | None) -> None:
        with self.tx(check_space=False) as c:
            c.execute("UPDATE tenants SET head=? WHERE name=?", (sha, tenant))

    def head(self, tenant: str) -> str | None:
        r = self.conn().execute("SELECT head FROM tenants WHERE name=?", (tenant,)).fetchone()
        return r["head"] if r else None

    # -- keys ---------------------------------------------------------------------------
    def create_key(self, scope: str, tenant: str | None) -> tuple[str, dict]:
        """A new random key; returns (key, row). The key itself is never stored."""
        if scope not in SCOPES:
            raise UsageError(f"invalid scope {str(scope)[:40]!r}", hint="one of admin, operator, tenant, exec")
        if scope in ("tenant", "exec") and not tenant:
            raise UsageError("a tenant key needs a tenant")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        kid = "k_" + secrets.token_hex(8)
        row = {"id": kid, "prefix": key[:10], "scope": scope, "tenant": tenant, "created_at": time.time(), "revoked_at": None}
        with self.tx() as c:
            if tenant is not None and not c.execute("SELECT 1 FROM tenants WHERE name=?", (tenant,)).fetchone():
                raise NotFound(f"no tenant {tenant!r}")
            c.execute(
                "INSERT INTO api_keys (id, hash, prefix, scope, tenant, created_at) VALUES (?,?,?,?,?,?)",
                (kid, hash_key(key), row["prefix"], scope, tenant, row["created_at"]),
            )
        return key, row

    def list_keys(self, tenant: str | None = None) -> list[dict]:
        q = "SELECT id, prefix, scope, tenant, created_at, revoked_at FROM api_keys"
        if tenant is None:
            rows = self.conn().execute(q + " ORDER BY created_at").fetchall()
        else:
            rows = self.conn().execute(q + " WHERE tenant=? ORDER BY created_at", (tenant,)).fetchall()
        return [dict(r) for r in rows]

    def revoke_key(self, kid: str) -> dict:
        with self.tx(check_space=False) as c:  # revoking a leaked key must work on a full disk too
            r = c.execute("SELECT id, scope, revoked_at FROM api_keys WHERE id=?", (kid,)).fetchone()
            if r is None:
                raise NotFound(f"no key {kid[:40]!r}")
            if r["scope"] == "admin" and r["revoked_at"] is None:
                live = c.execute("SELECT count(*) FROM api_keys WHERE scope='admin' AND revoked_at IS NULL").fetchone()[0]
                if live <= 1:
                    raise Conflict("this is the last admin key; create another admin key before revoking it")
            now = r["revoked_at"] or time.time()
            c.execute("UPDATE api_keys SET revoked_at=? WHERE id=?", (now, kid))
        return {"id": kid, "revoked": True, "revoked_at": now}

    def authenticate(self, key: str) -> Principal | None:
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        r = self.conn().execute(
            "SELECT id, scope, tenant FROM api_keys WHERE hash=? AND revoked_at IS NULL", (hash_key(key),)
        ).fetchone()
        return Principal(r["id"], r["scope"], r["tenant"]) if r else None

    def ensure_admin_key(self) -> tuple[str | None, Path]:
        """First start: create an admin key, write it to `<data>/admin.key` (0600); (key, path).

        The key is None when an admin key already existed; only the creating process sees it.
        """
        path = self.data_dir / "admin.key"
        with self.tx(check_space=False) as c:
            live = c.execute("SELECT 1 FROM api_keys WHERE scope='admin' AND revoked_at IS NULL").fetchone()
            if live and path.exists():
                return None, path
            key = KEY_PREFIX + secrets.token_urlsafe(32)
            kid = "k_" + secrets.token_hex(8)
            c.execute(
                "INSERT INTO api_keys (id, hash, prefix, scope, tenant, created_at) VALUES (?,?,?,?,?,?)",
                (kid, hash_key(key), key[:10], "admin", None, time.time()),
            )
            atomic_write(path, (key + "\n").encode(), mode=0o600)
        return key, path

    # -- workbooks ----------------------------------------------------------------------
    def get_workbook(self, tenant: str, wid: str) -> dict | None:
        r = self.conn().execute(
            "SELECT id, source, fragment, fragment_z, headlines, headlines_z, meta, sha, etag, created_at, updated_at"
            " FROM workbooks WHERE tenant=? AND id=?",
            (tenant, wid),
        ).fetchone()
        if r is None:
            return None
        d = dict(r)
        d["fragment"] = _unz(d.pop("fragment_z"), d["fragment"])
        d["headlines"] = json.loads(_unz(d.pop("headlines_z"), d["headlines"]))
        d["meta"] = json.loads(d["meta"])
        return d

    # -- write intents (gitstore.unit / gitstore.fsck) -----------------------------------------
    def put_intent(self, tenant: str, workbook: str, data: dict) -> None:
        """Record, durably, the git write about to happen; the index write that completes it removes it."""
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO intents (tenant, workbook, data, created_at) VALUES (?,?,?,?)",
                      (tenant, workbook, json.dumps(data, sort_keys=True), time.time()))

    def get_intent(self, tenant: str) -> dict | None:
        r = self.conn().execute("SELECT data FROM intents WHERE tenant=?", (tenant,)).fetchone()
        if r is None:
            return None
        try:
            data = json.loads(r["data"])
        except ValueError:
            return {"corrupt": True}
        return data if isinstance(data, dict) else {"corrupt": True}

    def clear_intent(self, tenant: str) -> None:
        with self.tx(check_space=False) as c:
            c.execute("DELETE FROM intents WHERE tenant=?", (tenant,))

    def workbook_sources(self, tenant: str) -> list[tuple[str, str]]:
        """[(id, source)] of every indexed workbook of a tenant (the reconciler compares them with git)."""
        rows = self.conn().execute("SELECT id, source FROM workbooks WHERE tenant=? ORDER BY id", (tenant,)).fetchall()
        return [(r["id"], r["source"]) for r in rows]

    def workbook_sha(self, tenant: str, wid: str) -> tuple[str, str] | None:
        r = self.conn().execute("SELECT sha, source FROM workbooks WHERE tenant=? AND id=?", (tenant, wid)).fetchone()
        return (r["sha"], r["source"]) if r else None

    def list_workbooks(self, tenant: str) -> list[dict]:
        rows = self.conn().execute(
            "SELECT id, meta, sha, created_at, updated_at, length(source) AS bytes FROM workbooks WHERE tenant=? ORDER BY id",
            (tenant,),
        ).fetchall()
        out = []
        for r in rows:
            meta = json.loads(r["meta"])
            out.append({"id": r["id"], "title": meta.get("title", ""), "sha": r["sha"], "bytes": r["bytes"],
                        "created_at": r["created_at"], "updated_at": r["updated_at"]})
        return out

    def put_workbook(self, tenant: str, wid: str, *, source: str, fragment: str, page: str,
                     headlines: Any, meta: dict, sha: str, head: str | None = None) -> None:
        validate_workbook_id(wid)
        page_b = page.encode("utf-8")
        now = time.time()
        check_free_space(self.path.parent, need=2 * len(page_b))
        ref = self.pages.put(page_b)  # before the transaction: it stays short
        # fragment and headlines compress ~10x; kept plain they made the index ~5x the source
        frag_z = zlib.compress(fragment.encode("utf-8"), ZLEVEL)
        heads_z = zlib.compress(json.dumps(headlines, ensure_ascii=False).encode("utf-8"), ZLEVEL)
        with self.tx() as c:
            if not c.execute("SELECT 1 FROM tenants WHERE name=?", (tenant,)).fetchone():
                raise NotFound(f"no tenant {tenant!r}")
            old = c.execute("SELECT created_at, page_ref FROM workbooks WHERE tenant=? AND id=?", (tenant, wid)).fetchone()
            created = old["created_at"] if old else now
            self._keep_page(ref, page_b)
            c.execute(
                "INSERT OR REPLACE INTO workbooks (tenant, id, source, fragment, page, page_gz, etag, headlines, meta,"
                " sha, created_at, updated_at, page_ref, fragment_z, headlines_z) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (tenant, wid, source, "", b"", b"", page_etag(page_b), "", json.dumps(meta, ensure_ascii=False),
                 sha, created, now, ref, frag_z, heads_z),
            )
            if head is not None:
                c.execute("UPDATE tenants SET head=? WHERE name=?", (head, tenant))
            c.execute("DELETE FROM intents WHERE tenant=? AND workbook=?", (tenant, wid))  # the unit is complete
            self._collect_page(c, old["page_ref"] if old is not None else None)

    def _keep_page(self, ref: str, page_b: bytes) -> None:
        """Inside the write transaction: the page files exist (a collector that ran between our
        put and our BEGIN may have removed them; none can run until we commit)."""
        if not self.pages.has(ref):
            self.pages.put(page_b)

    def _collect_page(self, c: sqlite3.Connection, ref: str | None) -> None:
        """Inside the write transaction that dropped a reference: when no row names the page any
        more, schedule its file for removal after a grace period (a reader that read the old row a
        moment ago still finds the file), and remove what is due."""
        if ref and not c.execute("SELECT 1 FROM workbooks WHERE page_ref=? LIMIT 1", (ref,)).fetchone():
            c.execute("INSERT OR REPLACE INTO page_gc (ref, since) VALUES (?, ?)", (ref, time.time()))
        due = c.execute("SELECT ref FROM page_gc WHERE since <= ? ORDER BY since LIMIT 64",
                        (time.time() - page_gc_grace_s(),)).fetchall()
        for r in due:
            if not c.execute("SELECT 1 FROM workbooks WHERE page_ref=? LIMIT 1", (r["ref"],)).fetchone():
                self.pages.collect(r["ref"])
            c.execute("DELETE FROM page_gc WHERE ref=?", (r["ref"],))

    def republish(self, tenant: str, wid: str, page: str) -> None:
        """Replace a workbook's published page (after a variable changed); source and sha stay."""
        page_b = page.encode("utf-8")
        check_free_space(self.path.parent, need=2 * len(page_b))
        ref = self.pages.put(page_b)
        with self.tx() as c:
            old = c.execute("SELECT page_ref FROM workbooks WHERE tenant=? AND id=?", (tenant, wid)).fetchone()
            self._keep_page(ref, page_b)
            c.execute(
                "UPDATE workbooks SET page=?, page_gz=?, etag=?, page_ref=? WHERE tenant=? AND id=?",
                (b"", b"", page_etag(page_b), ref, tenant, wid),
            )
            self._collect_page(c, old["page_ref"] if old is not None else ref)

    def fragments_using(self, tenant: str, needle: str) -> list[tuple[str, str, dict]]:
        rows = self.conn().execute(
            "SELECT id, fragment, fragment_z, meta FROM workbooks WHERE tenant=?"
            " AND (fragment_z IS NOT NULL OR instr(fragment, ?) > 0 OR instr(meta, ?) > 0)",
            (tenant, needle, needle)
        ).fetchall()
        out = []
        for r in rows:
            fragment = _unz(r["fragment_z"], r["fragment"])
            if needle in fragment or needle in r["meta"]:
                out.append((r["id"], fragment, json.loads(r["meta"])))
        return out

    def delete_workbook(self, tenant: str, wid: str, head: str | None = None) -> None:
        with self.tx() as c:
            old = c.execute("SELECT page_ref FROM workbooks WHERE tenant=? AND id=?", (tenant, wid)).fetchone()
            c.execute("DELETE FROM workbooks WHERE tenant=? AND id=?", (tenant, wid))
            c.execute("DELETE FROM intents WHERE tenant=? AND workbook=?", (tenant, wid))  # the unit is complete
            if old is not None:
                self._collect_page(c, old["page_ref"])
            c.execute("DELETE FROM domains WHERE tenant=? AND workbook=?", (tenant, wid))
            if head is not None:
                c.execute("UPDATE tenants SET head=? WHERE name=?", (head, tenant))

    def published(self, tenant: str, wid: str) -> dict | None:
        """What the public plane serves for one workbook (page bytes, gzip bytes, ETag, meta)."""
        for _ in range(5):
            r = self.conn().execute(
                "SELECT page, page_gz, page_ref, etag, meta, updated_at, sha FROM workbooks WHERE tenant=? AND id=?",
                (tenant, wid),
            ).fetchone()
            if r is None:
                return None
            if r["page_ref"] is None:  # a row written before pages moved out of the index
                page, page_gz = bytes(r["page"]), bytes(r["page_gz"])
            else:
                try:
                    page, page_gz = self.pages.get(r["page_ref"])
                except FileNotFoundError:  # replaced and collected between the row and the file: read again
                    time.sleep(0.01)
                    continue
            return {"page": page, "page_gz": page_gz, "etag": r["etag"],
                    "meta": json.loads(r["meta"]), "updated_at": r["updated_at"], "sha": r["sha"]}
        raise FileNotFoundError(f"the page file of {tenant}/{wid} is missing")

    def put_var(self, tenant: str, key: str, value: str, secret: bool) -> dict:
        validate_var_key(key)
        raw = value.encode("utf-8")
        blob = self.box.seal(tenant, key, raw) if secret else raw
        now = time.time()
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO vars (tenant, key, secret, value, size, updated_at) VALUES (?,?,?,?,?,?)",
                (tenant, key, 1 if secret else 0, blob, len(raw), now),
            )
        return self._var_view(key, secret, value if not secret else None, len(raw), now)

    @staticmethod
    def _var_view(key: str, secret: bool, value: str | None, size: int, updated_at: float) -> dict:
        if secret:
            return {"key": key, "secret": True, "value": "[redacted]", "size": size, "updated_at": updated_at}
        return {"key": key, "secret": False, "value": value, "size": size, "updated_at": updated_at}

    def get_var(self, tenant: str, key: str) -> dict | None:
        r = self.conn().execute(
            "SELECT key, secret, value, size, updated_at FROM vars WHERE tenant=? AND key=?", (tenant, key)
        ).fetchone()
        if r is None:
            return None
        val = None if r["secret"] else bytes(r["value"]).decode("utf-8")
        return self._var_view(r["key"], bool(r["secret"]), val, r["size"], r["updated_at"])

    def list_vars(self, tenant: str) -> list[dict]:
        rows = self.conn().execute(
            "SELECT key, secret, value, size, updated_at FROM vars WHERE tenant=? ORDER BY key", (tenant,)
        ).fetchall()
        return [
            self._var_view(r["key"], bool(r["secret"]), None if r["secret"] else bytes(r["value"]).decode("utf-8"),
                           r["size"], r["updated_at"])
            for r in rows
        ]

    def delete_var(self, tenant: str, key: str) -> bool:
        with self.tx() as c:
            cur = c.execute("DELETE FROM vars WHERE tenant=? AND key=?", (tenant, key))
        return cur.rowcount > 0

    def plain_vars(self, tenant: str) -> dict[str, str]:
        rows = self.conn().execute("SELECT key, value FROM vars WHERE tenant=? AND secret=0", (tenant,)).fetchall()
        return {r["key"]: bytes(r["value"]).decode("utf-8") for r in rows}

    def secret_value(self, tenant: str, key: str) -> str | None:
        """The plaintext of one secret. Only egress code (templates.resolve_for_egress) calls this."""
        r = self.conn().execute(
            "SELECT value FROM vars WHERE tenant=? AND key=? AND secret=1", (tenant, key)
        ).fetchone()
        if r is None:
            return None
        return self.box.open(tenant, key, bytes(r["value"])).decode("utf-8")

    # -- domains ------------------------------------------------------------------------
    # Claims live in workbooks.store.hosts; this legacy table is read once, to move its rows over.
    def put_domain(self, host: str, tenant: str, workbook: str) -> dict:
        now = time.time()
        with self.tx() as c:
            r = c.execute("SELECT tenant FROM domains WHERE host=?", (host,)).fetchone()
            if r is not None and r["tenant"] != tenant:
                raise Conflict(f"{host} is registered to another tenant")
            if not c.execute("SELECT 1 FROM workbooks WHERE tenant=? AND id=?", (tenant, workbook)).fetchone():
                raise NotFound(f"no workbook {workbook!r}", hint="deploy it first: PUT /api/workbooks/:id")
            c.execute(
                "INSERT OR REPLACE INTO domains (host, tenant, workbook, created_at) VALUES (?,?,?,?)",
                (host, tenant, workbook, now),
            )
        return {"host": host, "workbook": workbook, "created_at": now}


__all__ = ["Store", "Principal", "hash_key", "page_etag", "InvalidName", "db_path"]
