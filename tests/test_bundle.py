""".wbundle: signed, Private-free, and unbundled without trusting the archive."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import run_wbx
from workbooks.bundle import BundleTooLarge, Caps, UnsafeBundle, make_bundle, unbundle, verify_bundle
from workbooks.bundle.manifest import sign_manifest
from workbooks.errors import UsageError, VerificationFailed
from workbooks.ledger import identity_from_seed

IDENT = identity_from_seed("dev", bytes(32))
ORG = b"#+TITLE: Field notes\n\n* Observations\nThe *kestrel* hovered.\n"


def org_file(tmp_path: Path) -> Path:
    p = tmp_path / "notes.org"
    p.write_bytes(ORG)
    return p


def entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def write_zip(path: Path, files: dict[str, bytes], *, manifest: bool = True, symlinks=(), extra_infos=()) -> Path:
    """A hand-made bundle: `files` plus (by default) a correctly signed manifest of them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if manifest:
            m = {
                "v": 1,
                "format": "wbundle",
                "entry": "workbook.org",
                "did": IDENT.did,
                "created": 0,
                "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()},
            }
            zf.writestr("manifest.json", json.dumps(sign_manifest(m, IDENT)))
        for name, data in files.items():
            zf.writestr(name, data)
        for name in symlinks:
            zi = zipfile.ZipInfo(name)
            zi.create_system = 3
            zi.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(zi, "/etc/passwd")
        for zi, data in extra_infos:
            zf.writestr(zi, data)
    return path


BASE = {"workbook.org": ORG, "workbook.html": b"<p>hi</p>"}


def test_bundle_single_file_round_trip(tmp_path):
    res = make_bundle(org_file(tmp_path), IDENT)
    bundle = tmp_path / "notes.wbundle"
    assert res["bundle"] == str(bundle)
    got = entries(bundle)
    assert set(got) == {"manifest.json", "workbook.org", "workbook.html"}
    assert got["workbook.org"] == ORG
    html = got["workbook.html"].decode()
    from workbooks.oql import default_kernel
    from workbooks.page import page_from_org

    expected = page_from_org(ORG.decode(), default_kernel().call("render", ORG.decode()))
    assert html == expected and "<html" in html.lower()  # the kernel's render inside the page shell
    assert "<b>kestrel</b>" in html and "Observations" in html
    manifest = json.loads(got["manifest.json"])
    assert manifest["did"] == IDENT.did and len(manifest["sig"]) == 128
    assert manifest["files"]["workbook.org"]["sha256"] == hashlib.sha256(ORG).hexdigest()
    assert verify_bundle(bundle)["did"] == IDENT.did
    out = unbundle(bundle)
    tree = Path(out["out"])
    assert tree == tmp_path / "notes"
    assert (tree / "workbook.org").read_bytes() == ORG and (tree / "workbook.html").read_bytes() == got["workbook.html"]


def test_bundle_folder_keeps_private_and_ignored_files_out(tmp_path):
    src = tmp_path / "proj"
    for rel, data in {
        "workbook.org": ORG,
        "assets/chart.svg": b"<svg/>",
        "content/post.org": b"* post\n",
        "memory/session.md": b"what the agent thought",
        ".beads/issues.jsonl": b"{}",
        ".claude/settings.json": b"{}",
        "_steps.jsonl": b"{}",
        "runs/r1/_ledger.json": b"{}",
        "scratch/x": b"x",
        "tmp/y": b"y",
        ".workbooks/dev.ed25519": b"k" * 32,
        "drafts/secret.org": b"not yet",
        ".env": b"TOKEN=1",
        "keys/a.ed25519": b"k" * 32,
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    os.symlink("/etc/passwd", src / "assets" / "link")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / ".gitignore").write_text("drafts/\n")
    res = make_bundle(src, IDENT, tmp_path / "proj.wbundle")
    got = entries(tmp_path / "proj.wbundle")
    assert set(got) == {"manifest.json", "workbook.org", "workbook.html", "assets/chart.svg", "content/post.org"}
    assert res["files"] == sorted(["workbook.org", "workbook.html", "assets/chart.svg", "content/post.org"])
    out = unbundle(tmp_path / "proj.wbundle", tmp_path / "back")
    assert (Path(out["out"]) / "assets" / "chart.svg").read_bytes() == b"<svg/>"


def test_tampered_bundles_fail_verification(tmp_path):
    make_bundle(org_file(tmp_path), IDENT)
    good = entries(tmp_path / "notes.wbundle")

    def rebuild(name, files):
        p = tmp_path / name
        with zipfile.ZipFile(p, "w") as zf:
            for n, b in files.items():
                zf.writestr(n, b)
        return p

    cases = {
        "edited.wbundle": dict(good, **{"workbook.org": ORG + b"* injected\n"}),
        "extra.wbundle": dict(good, **{"payload.js": b"alert(1)"}),
        "dropped.wbundle": {k: v for k, v in good.items() if k != "workbook.html"},
        "unsigned.wbundle": {k: v for k, v in good.items() if k != "manifest.json"},
    }
    m = json.loads(good["manifest.json"])
    m["sig"] = ("0" if m["sig"][0] != "0" else "1") + m["sig"][1:]
    cases["forged.wbundle"] = dict(good, **{"manifest.json": json.dumps(m).encode()})
    m2 = json.loads(good["manifest.json"])
    m2["did"] = identity_from_seed("x", bytes(range(32))).did
    cases["other-did.wbundle"] = dict(good, **{"manifest.json": json.dumps(m2).encode()})
    for name, files in cases.items():
        p = rebuild(name, files)
        with pytest.raises(VerificationFailed):
            verify_bundle(p)
        with pytest.raises(VerificationFailed):
            unbundle(p, tmp_path / ("out-" + name))
        assert not (tmp_path / ("out-" + name)).exists()
    (tmp_path / "notzip.wbundle").write_bytes(b"PK\x03\x04 nope")
    with pytest.raises(VerificationFailed):
        verify_bundle(tmp_path / "notzip.wbundle")
    with pytest.raises(VerificationFailed):
        verify_bundle(tmp_path / "notes.wbundle", expected_did=m2["did"])


@pytest.mark.parametrize(
    "name",
    [
        "/etc/cron.d/evil", "../escape.txt", "a/../../escape.txt", "./workbook2.org", ".git/config", "sub/.git/hooks/post-checkout",
        ".GIT/config", ".jj/repo/x", ".bashrc", ".ssh/authorized_keys", "memory/x.md", ".workbooks/dev.ed25519", "_steps.jsonl",
        "C:/Windows/x", "a\\..\\..\\x", "a//b",
    ],
)
def test_unbundle_refuses_dangerous_names(tmp_path, name):
    p = write_zip(tmp_path / "evil.wbundle", dict(BASE, **{name: b"owned"}))
    with pytest.raises(VerificationFailed):
        unbundle(p, tmp_path / "out" / "tree")
    assert not (tmp_path / "out" / "tree").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temp folder left behind


def test_unbundle_refuses_symlinks(tmp_path):
    p = write_zip(tmp_path / "link.wbundle", BASE, symlinks=["assets/passwd"])
    with pytest.raises(UnsafeBundle, match="symlink"):
        unbundle(p, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_unbundle_refuses_duplicates_and_too_many_entries(tmp_path):
    dup = zipfile.ZipInfo("workbook.org")
    p = write_zip(tmp_path / "dup.wbundle", BASE, extra_infos=[(dup, b"second copy")])
    with pytest.raises(UnsafeBundle, match="duplicate"):
        unbundle(p, tmp_path / "o1")
    many = dict(BASE, **{f"f/{i}.txt": b"x" for i in range(40)})
    p = write_zip(tmp_path / "many.wbundle", many)
    with pytest.raises(BundleTooLarge):
        unbundle(p, tmp_path / "o2", caps=Caps(entries=20))
    assert unbundle(p, tmp_path / "o3")["files"]  # the same bundle under default caps is fine


def test_zip_bomb_is_stopped_by_inflated_bytes_not_declared_sizes(tmp_path):
    bomb = dict(BASE, **{"data/zeros.bin": b"\0" * (20 * 1024 * 1024)})
    p = write_zip(tmp_path / "bomb.wbundle", bomb)
    assert p.stat().st_size < 200_000
    with pytest.raises(BundleTooLarge):
        unbundle(p, tmp_path / "o1", caps=Caps(total_bytes=1024 * 1024))
    with pytest.raises(BundleTooLarge):
        verify_bundle(p, caps=Caps(file_bytes=1024 * 1024))
    assert not (tmp_path / "o1").exists()
    # lie in the central directory: claim the 20 MiB entry inflates to 10 bytes
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("data/zeros.bin")
    off = 0
    while True:
        off = raw.find(b"PK\x01\x02", off)
        name_len = struct.unpack("<H", raw[off + 28 : off + 30])[0]
        if raw[off + 46 : off + 46 + name_len] == b"data/zeros.bin":
            break
        off += 4
    raw[off + 24 : off + 28] = struct.pack("<I", 10)
    lying = tmp_path / "lying.wbundle"
    lying.write_bytes(bytes(raw))
    with zipfile.ZipFile(lying) as zf:
        assert zf.getinfo("data/zeros.bin").file_size == 10 != info.file_size
    with pytest.raises(VerificationFailed):
        unbundle(lying, tmp_path / "o2", caps=Caps(total_bytes=1024 * 1024))
    assert not (tmp_path / "o2").exists()


def test_unbundle_never_overwrites(tmp_path):
    make_bundle(org_file(tmp_path), IDENT)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "workbook.org").write_bytes(b"my local edits")
    with pytest.raises(UsageError):
        unbundle(tmp_path / "notes.wbundle")
    assert (tmp_path / "notes" / "workbook.org").read_bytes() == b"my local edits"


def test_cli_bundle_verify_unbundle(tmp_path):
    env = {"WB_DATA": str(tmp_path / "data"), "WB_SIGNING_KEY": "00" * 32, "WB_PRIMARY_TENANT": "dev"}
    src = org_file(tmp_path)
    p = run_wbx("bundle", str(src), "--out", str(tmp_path / "x.wbundle"), env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["did"] == IDENT.did
    p = run_wbx("verify", str(tmp_path / "x.wbundle"), env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["valid"] is True
    p = run_wbx("unbundle", str(tmp_path / "x.wbundle"), "--out", str(tmp_path / "tree"), env=env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "tree" / "workbook.org").read_bytes() == ORG
    files = entries(tmp_path / "x.wbundle")
    with zipfile.ZipFile(tmp_path / "bad.wbundle", "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b.replace(b"kestrel", b"falcon!") if n == "workbook.org" else b)
    p = run_wbx("verify", str(tmp_path / "bad.wbundle"), env=env)
    assert p.returncode == 5
    p = run_wbx("unbundle", str(tmp_path / "bad.wbundle"), "--out", str(tmp_path / "bad"), env=env)
    assert p.returncode == 5 and not (tmp_path / "bad").exists()


def test_non_utf8_workbook_is_a_clear_error(tmp_path):
    from workbooks.errors import BadRequest

    bad = tmp_path / "bad.org"
    bad.write_bytes(b"* caf\xe9\n")
    with pytest.raises(BadRequest, match="UTF-8"):
        make_bundle(bad, IDENT)
    assert not (tmp_path / "bad.wbundle").exists()


def test_bundle_honours_the_operators_raw_html_switch(tmp_path, monkeypatch):
    src = tmp_path / "raw.org"
    src.write_bytes(b"#+TITLE: r\n* Part\n#+HTML: <aside class=\"author-made\">hi</aside>\nplain words\n")
    on = entries(Path(make_bundle(src, IDENT, tmp_path / "on.wbundle")["bundle"]))["workbook.html"].decode()
    assert 'class="author-made"' in on
    monkeypatch.setenv("WB_RAW_HTML", "0")
    off = entries(Path(make_bundle(src, IDENT, tmp_path / "off.wbundle")["bundle"]))["workbook.html"].decode()
    assert 'class="author-made"' not in off and "plain words" in off
