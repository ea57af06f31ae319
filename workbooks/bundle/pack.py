"""Make a `.wbundle`: a zip carrying `workbook.org` and `workbook.html` side by side (the source
travels with the artifact, so a recipient can unbundle and re-author), plus a signed `manifest.json`.

Bundling a folder also carries its other shareable files; anything Private, git-ignored, a
symlink, a top-level dotfile or inside a control directory stays out.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

from workbooks import private
from workbooks.bundle.manifest import (
    ENTRY_HTML,
    ENTRY_ORG,
    MANIFEST,
    RESERVED,
    sign_manifest,
)
from workbooks.errors import BadRequest, NotFound, UsageError
from workbooks.ledger.identity import Identity

MAX_PACK_FILES = 10_000
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give the same entries


def render_html(org: bytes) -> str:
    """The standalone page for `org`: the kernel's render inside the page shell."""
    from workbooks.oql import default_kernel

    try:
        text = org.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the workbook is not valid UTF-8 (byte {e.start})") from None
    from workbooks.author_html import enabled_globally

    # the operator's switch holds for bundles too: with WB_RAW_HTML=0 no author HTML is packed
    options = None if enabled_globally() else {"raw_html": False}
    fragment = default_kernel().render(text, options)
    try:
        from workbooks.page import page_from_org

        return page_from_org(text, fragment)
    except ImportError:
        from workbooks.page import render_page

        return render_page(fragment, title="", description="")


def _find_main_org(folder: Path) -> Path:
    main = folder / "workbook.org"
    if main.is_file() and not main.is_symlink():
        return main
    orgs = sorted(p for p in folder.glob("*.org") if p.is_file() and not p.is_symlink() and not p.name.startswith("."))
    if len(orgs) == 1:
        return orgs[0]
    if not orgs:
        raise NotFound(f"no .org file at the top of {folder}")
    raise UsageError(f"{folder} has several .org files; name the main one workbook.org or bundle a single file")


def collect_extra_files(folder: Path, main: Path) -> list[str]:
    """The shareable files under `folder` besides the main org (relative POSIX paths, sorted)."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        rel_root = os.path.relpath(root, folder)
        rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/")
        keep = []
        for d in dirs:
            rel = f"{rel_root}/{d}" if rel_root else d
            full = Path(root) / d
            if full.is_symlink() or d.lower() in private.CONTROL_DIRS or private.is_private(rel + "/x"):
                continue
            if not rel_root and d.startswith("."):
                continue
            keep.append(d)
        dirs[:] = keep
        for f in files:
            rel = f"{rel_root}/{f}" if rel_root else f
            full = Path(root) / f
            if full.is_symlink() or not full.is_file():
                continue
            if not rel_root and (f.startswith(".") or f in RESERVED):
                continue
            if full.resolve() == main.resolve():
                continue
            found.append(rel)
    found = private.shareable(folder, sorted(found))
    if len(found) > MAX_PACK_FILES:
        raise BadRequest(f"{folder} has more than {MAX_PACK_FILES} shareable files")
    return found


def _zinfo(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.external_attr = (0o100644 & 0xFFFF) << 16
    zi.create_system = 3  # unix, so the mode bits mean what they say
    return zi


def make_bundle(source: str | os.PathLike, ident: Identity, out: str | os.PathLike | None = None) -> dict:
    """Bundle an .org file (or a folder holding one) into `out` (default: <name>.wbundle beside it)."""
    src = Path(source)
    if str(source) == "-":
        raise NotFound("bundle wants a real path, not stdin (-)")
    if not src.exists():
        raise NotFound(f"read {src}: No such file or directory")
    extras: list[str] = []
    if src.is_dir():
        main = _find_main_org(src)
        extras = collect_extra_files(src, main)
        base = src
    else:
        main, base = src, None
    org = main.read_bytes()
    html = render_html(org).encode("utf-8")
    contents: dict[str, bytes | Path] = {ENTRY_ORG: org, ENTRY_HTML: html}
    for rel in extras:
        contents[rel] = base / rel  # streamed from disk when written
    files = {}
    for name, data in contents.items():
        if isinstance(data, bytes):
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        else:
            h, n = hashlib.sha256(), 0
            with open(data, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                    n += len(chunk)
            files[name] = {"sha256": h.hexdigest(), "size": n}
    manifest = {
        "v": 1,
        "format": "wbundle",
        "entry": ENTRY_ORG,
        "source": main.name,
        "did": ident.did,
        "tenant": ident.tenant,
        "created": int(time.time()),
        "files": files,
    }
    manifest = sign_manifest(manifest, ident)
    dest = Path(out) if out else (src.parent / f"{(src.name if src.is_dir() else src.stem)}.wbundle")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(_zinfo(MANIFEST), json.dumps(manifest, sort_keys=True, indent=2).encode("utf-8"))
            for name, data in contents.items():
                if isinstance(data, bytes):
                    zf.writestr(_zinfo(name), data)
                else:
                    with open(data, "rb") as fh, zf.open(_zinfo(name), "w") as w:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            w.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return {"bundle": str(dest), "did": ident.did, "files": sorted(files), "source": str(main)}
