"""Storage amplification: a deployed workbook's page and gzip are stored once, outside the SQLite
index, so the index stays within 3x the source it holds; the public plane serves the same bytes
(ETag, 304, gzip) from the page files, and unreferenced page files are collected."""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
from importlib import resources
from pathlib import Path

import httpx

from workbooks.web_control.launch import Planes

DEMO = resources.files("workbooks.samples").joinpath("demo.org").read_text("utf-8")


def big_workbook(target: int) -> str:
    """A realistic ~target-byte workbook: the demo's prose, tables and code over and over."""
    parts = ["#+TITLE: Big book\n"]
    n = 0
    size = 0
    body = DEMO.split("\n*", 1)[1] if "\n*" in DEMO else DEMO
    while size < target:
        n += 1
        chunk = f"\n* Part {n}\n" + body.replace("\n*", "\n**")
        parts.append(chunk)
        size += len(chunk.encode())
    return "".join(parts)


def db_bytes(data: Path) -> int:
    db = data / ".workbooks" / "index.db"
    c = sqlite3.connect(db)
    try:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        c.close()
    return sum(p.stat().st_size for p in db.parent.glob("index.db*"))


def page_files(data: Path) -> list[Path]:
    return sorted((data / ".workbooks" / "pages").glob("??/*.html.gz"))


def public_get(http, planes, host: str, **headers):
    return http.get(planes.public_url + "/", headers={"Host": host, **headers})


def test_a_5mb_workbook_keeps_the_index_within_3x_its_source_and_serves_the_same_page(tmp_path):
    data = tmp_path / "data"
    http = httpx.Client(timeout=120)
    src = big_workbook(5 * 1024 * 1024)
    with Planes(data, env={"WB_PAGE_GC_GRACE_S": "0"}) as planes:  # collect at once, to see it
        admin = {"Authorization": f"Bearer {planes.admin_key()}"}
        empty = db_bytes(data)
        assert http.post(planes.control_url + "/api/tenants", json={"name": "dev"}, headers=admin).status_code in (201, 409)
        auth = {**admin, "X-Workbooks-Tenant": "dev"}
        r = http.put(planes.control_url + "/api/workbooks/big", content=src.encode(), headers=auth)
        assert r.status_code == 200, r.text
        index = db_bytes(data) - empty
        print(f"index grew {index} bytes for {len(src.encode())} source bytes ({index / len(src.encode()):.2f}x)")
        assert index <= 3 * len(src.encode()), (index, len(src.encode()))

        # the page lives once, in one content-addressed file (its gzip)
        files = page_files(data)
        assert len(files) == 1
        html = files[0]
        page = gzip.decompress(html.read_bytes())
        assert html.name == hashlib.sha256(page).hexdigest() + ".html.gz"

        # the public plane serves exactly those bytes, with ETag/304 and gzip as before
        host = "big.localhost"
        r = public_get(http, planes, host)
        if r.status_code == 404:
            host = "big.dev.localhost"
            r = public_get(http, planes, host)
        assert r.status_code == 200 and r.content == page
        etag = r.headers["etag"]
        assert public_get(http, planes, host, **{"If-None-Match": etag}).status_code == 304
        gz = http.get(planes.public_url + "/", headers={"Host": host, "Accept-Encoding": "gzip"})
        assert gz.headers.get("content-encoding") == "gzip" and gz.content == page  # httpx inflates it

        # a new version replaces the page; the old files are collected, the public plane follows at once
        r = http.put(planes.control_url + "/api/workbooks/big", content=(src + "\n* One more part\n").encode(),
                     headers=auth)
        assert r.status_code == 200
        files2 = page_files(data)
        assert len(files2) == 1 and html not in files2
        assert b"One more part" in public_get(http, planes, host).content

        # two workbooks with the same page share the files; deleting one keeps them, deleting both removes them
        same = "#+TITLE: Twin\n* twin\n"
        for wid in ("twin-a", "twin-b"):
            assert http.put(planes.control_url + f"/api/workbooks/{wid}", content=same.encode(), headers=auth).status_code == 200
        c = sqlite3.connect(data / ".workbooks" / "index.db")
        refs = dict(c.execute("SELECT id, page_ref FROM workbooks WHERE id LIKE 'twin-%'").fetchall())
        c.close()
        assert len(refs) == 2
        assert len(page_files(data)) == 1 + len(set(refs.values()))
        assert http.delete(planes.control_url + "/api/workbooks/twin-a", headers=auth).status_code == 200
        assert len(page_files(data)) == 2  # twin-b's page is still named by a row
        assert http.delete(planes.control_url + "/api/workbooks/twin-b", headers=auth).status_code == 200
        assert len(page_files(data)) == 1  # only big's page is left
        assert http.delete(planes.control_url + "/api/workbooks/big", headers=auth).status_code == 200
        assert page_files(data) == []
    http.close()


def test_readers_never_see_a_collected_page_while_writers_replace_it(tmp_path, monkeypatch):
    """A reader between the row and the file (the page replaced meanwhile) still finds the file:
    unreferenced pages are removed only after a grace period. It always gets a whole page whose
    ETag is its own bytes, never an error; once the grace period is over the old page goes."""
    import threading

    from workbooks.store import Store
    from workbooks.store.db import page_etag

    store = Store(tmp_path / "data")
    store.create_tenant("t")
    pages = [f"<html>{'x' * 5000} version {i}</html>" for i in range(2)]
    store.put_workbook("t", "w", source="* w\n", fragment="", page=pages[0], headlines=[], meta={}, sha="0" * 40)
    stop = threading.Event()
    errors: list = []
    seen: set = set()

    def write() -> None:
        w = Store(tmp_path / "data")
        i = 0
        while not stop.is_set():
            i += 1
            w.put_workbook("t", "w", source="* w\n", fragment="", page=pages[i % 2], headlines=[], meta={},
                           sha="0" * 40)
        w.close()

    def read() -> None:
        r = Store(tmp_path / "data")
        try:
            for _ in range(400):
                row = r.published("t", "w")
                if row["etag"] != page_etag(row["page"]) or gzip.decompress(row["page_gz"]) != row["page"]:
                    errors.append("torn")
                seen.add(row["page"])
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            errors.append(repr(e))
        finally:
            r.close()

    writer = threading.Thread(target=write)
    readers = [threading.Thread(target=read) for _ in range(3)]
    writer.start()
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    writer.join()
    store.close()
    assert errors == []
    assert len(seen) == 2  # both versions were read while they alternated
    assert len(page_files(tmp_path / "data")) == 2  # within the grace period both files stay
    monkeypatch.setenv("WB_PAGE_GC_GRACE_S", "0")
    store = Store(tmp_path / "data")
    store.put_workbook("t", "w", source="* w\n", fragment="", page=pages[0], headlines=[], meta={}, sha="0" * 40)
    store.put_workbook("t", "w", source="* w\n", fragment="", page=pages[1], headlines=[], meta={}, sha="0" * 40)
    store.close()
    files = page_files(tmp_path / "data")
    assert len(files) == 1 and gzip.decompress(files[0].read_bytes()).decode() == pages[1]
