"""Toolkits: a directory that teaches an agent a CLI it has never seen, discovered through Org.

A toolkit is `<root>/<dir>/manifest.org` (a `:toolkit:`-tagged headline found by the kernel's
`parse_headlines`, plus `#+TOOLKIT/#+TAGLINE/#+STATUS/#+VERSION/#+CAPS/#+CLI_BIN/#+EXEC/#+TRUST`
keywords) and `skills/*.org` (thin) or `skills/<slug>/SKILL.org` (thick) recipes the agent reads
on demand. Its id is the headline's `:ID:`, else `#+TOOLKIT:`, else the directory name.

Where toolkits are looked up, first match of an id wins (`search_path`):
  1. `$WB_TOOLKITS_PATH`, a colon list of directories (the original had one `$WB_TOOLKITS_ROOT`,
     honoured only when it names an existing directory; so is each entry here),
  2. `$WB_DATA/toolkits/`,
  3. the tenant repo's `toolkits/` (`$WB_DATA/<tenant>/toolkits/`; tenant-written, so last: it
     can add toolkits, never shadow the operator's).

Trust boundary: a toolkit root is supply-chain input. Reading is open but confined: inside a
root, nothing is reached through a symlink (every file is opened relative to its directory's
descriptor with O_NOFOLLOW), skill slugs are bare names, files are capped in size. Executing
toolkit code is default-deny: nothing in this module (or `wbx toolkit`) runs `CLI_BIN`, an
`#+EXEC` mode or a `:role` block; `verify` only reports them. `sign`/`verify` bind a toolkit's
files to an Ed25519 did:key: the signature (base64, `#+SIGNATURE:`, signer in `#+AUTHOR_DID:` as
in the original) covers a canonical digest of every file of the toolkit (see `digest`).

The `*_text` functions give the original's output texts (the CLI's human view and what an agent
reads); the other functions return data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from workbooks.errors import NotFound, UsageError, WorkbooksError

TOOLKIT_TAG = "toolkit"
MANIFEST = "manifest.org"
SKILLS = "skills"
MAX_FILE = 1 << 20  # a manifest or a skill larger than 1 MiB is not read
MAX_ENTRIES = 10000  # files a signed toolkit may hold
MAX_DEPTH = 32
MAX_SIGNED_BYTES = 512 << 20
INDEX_SKILLS = 8  # skill slugs named per toolkit in the system-prompt index
SIG_DOMAIN = b"workbooks-toolkit-v1:"
UNAVAILABLE = frozenset({"overloaded", "no_workers", "protocol", "unreachable"})  # pool codes: retry, not a verdict
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_KW = {}  # key -> compiled keyword regex
_SIG_LINE = re.compile(r"^[ \t]*#\+SIGNATURE:[^\n]*(?:\n|$)", re.M | re.I)
_SIGN_LINES = re.compile(r"^[ \t]*#\+(?:SIGNATURE|AUTHOR_DID):[^\n]*(?:\n|$)", re.M | re.I)
_CAPTION = re.compile(r"^[ \t]*#\+CAPTION:[ \t]*(\S[^\n]*)$", re.M | re.I)
_ROLE_PRE = re.compile(r"^[ \t]*#\+begin_src[ \t]+[^\n]*:role[ \t]+pre\b", re.M | re.I)
_O_DIR_AT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_O_FILE_AT = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ToolkitError(WorkbooksError):
    code = "toolkit_error"


def safe_name(name: object) -> bool:
    """A toolkit id, a skill slug or a directory entry we will open: a bare name, never a path."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and name not in (".", "..")


def keyword(text: str, key: str) -> str | None:
    """The first `#+KEY: value` of `text` (value on the same line, trimmed); None when absent or empty."""
    rx = _KW.get(key)
    if rx is None:
        rx = _KW[key] = re.compile(r"^[ \t]*#\+" + re.escape(key) + r":[ \t]*([^\n]*)$", re.M | re.I)
    m = rx.search(text)
    v = m.group(1).strip() if m else ""
    return v or None


def _one_line(v: str | None, cap: int = 300) -> str | None:
    if not v:
        return None
    v = " ".join(v.split())
    return v[:cap] or None


@dataclass(frozen=True)
class Toolkit:
    id: str
    root: str  # the search-path directory it was found in (real path)
    dirname: str  # its directory's name inside the root
    origin: str  # "WB_TOOLKITS_PATH" | "data" | "tenant" | "path" (a root given by the caller)
    title: str | None = None
    version: str | None = None
    status: str | None = None
    tagline: str | None = None
    cli_bin: str | None = None
    exec: str | None = None
    trust: str = "first-party"
    caps: list[str] = field(default_factory=list)
    author_did: str | None = None
    signature: str | None = None

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.dirname)

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "version": self.version, "status": self.status,
                "tagline": self.tagline, "cli_bin": self.cli_bin, "exec": self.exec, "trust": self.trust,
                "caps": list(self.caps), "dir": self.dir, "origin": self.origin,
                "signed_by": self.author_did if self.signature else None}


# -- where toolkits live ----------------------------------------------------------------------------
def search_path(env: dict | None = None, *, data_dir: str | None = None, tenant: str | None = None,
                path: str | None = None) -> list[tuple[str, str]]:
    """[(root, origin)] in lookup order: `path` (or $WB_TOOLKITS_PATH) entries, `$WB_DATA/toolkits`,
    the tenant repo's `toolkits/`. Only existing directories are kept, each once (by real path); the
    tenant repo's `toolkits` must be a real directory inside the repo (a committed symlink is not
    followed)."""
    env = os.environ if env is None else env
    roots: list[tuple[str, str]] = []
    listed = path if path is not None else env.get("WB_TOOLKITS_PATH", "")
    origin = "path" if path is not None else "WB_TOOLKITS_PATH"
    for entry in listed.split(":"):
        if entry.strip() and "\x00" not in entry:
            roots.append((entry, origin))
    data = data_dir or env.get("WB_DATA") or os.path.abspath("wb-data")
    roots.append((os.path.join(data, "toolkits"), "data"))
    if tenant is not None:
        from workbooks.gitstore.tenant import validate_tenant

        repo = os.path.join(data, validate_tenant(tenant))
        tk = os.path.join(repo, "toolkits")
        if (os.path.isdir(repo) and not os.path.islink(tk) and os.path.isdir(tk)
                and os.path.realpath(tk).startswith(os.path.realpath(repo) + os.sep)):
            roots.append((tk, "tenant"))
    out, seen = [], set()
    for root, origin in roots:
        try:
            real = os.path.realpath(os.path.abspath(root))
        except (OSError, ValueError):
            continue
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        out.append((real, origin))
    return out


def describe_roots(roots: list[tuple[str, str]], fallback: str = "") -> str:
    return ":".join(r for r, _ in roots) or fallback


# -- confined reads ---------------------------------------------------------------------------------
class _Dir:
    """An open directory descriptor (closed on exit); children are opened relative to it, never
    through a symlink."""

    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self) -> "_Dir":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def sub(self, name: str) -> "_Dir":
        if not safe_name(name):
            raise FileNotFoundError(name)
        return _Dir(os.open(name, _O_DIR_AT, dir_fd=self.fd))

    def read(self, name: str, cap: int = MAX_FILE) -> bytes:
        """A regular file's bytes (FileNotFoundError for anything else: a symlink, a FIFO, too large)."""
        if not safe_name(name):
            raise FileNotFoundError(name)
        try:
            fd = os.open(name, _O_FILE_AT, dir_fd=self.fd)
        except OSError as e:  # ELOOP: a symlink
            raise FileNotFoundError(name) from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
                raise FileNotFoundError(name)
            data = os.read(fd, cap + 1)
            while len(data) <= cap:
                more = os.read(fd, cap + 1 - len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        if len(data) > cap:
            raise FileNotFoundError(name)
        return data

    def text(self, name: str, cap: int = MAX_FILE) -> str:
        try:
            return self.read(name, cap).decode("utf-8")
        except UnicodeDecodeError:
            raise FileNotFoundError(name) from None

    def entries(self) -> list[os.DirEntry]:
        with os.scandir(self.fd) as it:
            return sorted(it, key=lambda e: e.name.encode("utf-8", "surrogateescape"))


def _open_root(root: str) -> _Dir:
    """A search-path root by its real path: a symlink found there now was swapped in since (refused)."""
    return _Dir(os.open(root, _O_DIR_AT))


def _open_toolkit(tk: Toolkit) -> _Dir:
    with _open_root(tk.root) as r:
        return r.sub(tk.dirname)


# -- discovery --------------------------------------------------------------------------------------
def _candidates(roots: list[tuple[str, str]]) -> Iterator[tuple[str, str, str, str]]:
    """(root, origin, dirname, manifest text) for every readable `<root>/<dir>/manifest.org`."""
    for root, origin in roots:
        try:
            r = _open_root(root)
        except OSError:
            continue
        with r:
            for e in r.entries():
                if not safe_name(e.name) or not e.is_dir(follow_symlinks=False):
                    continue
                try:
                    with r.sub(e.name) as d:
                        text = d.text(MANIFEST)
                except OSError:
                    continue
                yield root, origin, e.name, text


def _from_manifest(root: str, origin: str, dirname: str, text: str, headlines: Any) -> Toolkit | None:
    if not isinstance(headlines, list):
        return None
    head = next((h for h in headlines if isinstance(h, dict) and TOOLKIT_TAG in (h.get("tags") or [])), None)
    if head is None:
        return None
    props = head.get("props") if isinstance(head.get("props"), dict) else {}
    tid = head.get("id") or keyword(text, "TOOLKIT") or dirname
    if not safe_name(tid):
        return None

    def prop_or_kw(key: str) -> str | None:
        v = props.get(key)
        return _one_line(v if isinstance(v, str) and v.strip() else keyword(text, key))

    caps = (keyword(text, "CAPS") or "").split()
    return Toolkit(
        id=tid, root=root, dirname=dirname, origin=origin,
        title=_one_line(keyword(text, "TITLE") or head.get("title")),
        version=prop_or_kw("VERSION"), status=prop_or_kw("STATUS"), tagline=_one_line(keyword(text, "TAGLINE")),
        cli_bin=prop_or_kw("CLI_BIN"), exec=_one_line(keyword(text, "EXEC")),
        trust=_one_line(keyword(text, "TRUST")) or "first-party", caps=caps[:64],
        author_did=keyword(text, "AUTHOR_DID"), signature=keyword(text, "SIGNATURE"),
    )


def _kernel_parse() -> Callable[[str], list]:
    from workbooks.oql import default_kernel

    return default_kernel().parse_headlines


def discover(roots: list[tuple[str, str]], parse: Callable[[str], list] | None = None) -> list[Toolkit]:
    """Every toolkit on the search path, in lookup order; an id found twice keeps the first."""
    parse = parse or _kernel_parse()
    out: dict[str, Toolkit] = {}
    for root, origin, dirname, text in _candidates(roots):
        try:
            heads = parse(text)
        except WorkbooksError:
            continue  # a manifest the kernel refuses is not a toolkit
        tk = _from_manifest(root, origin, dirname, text, heads)
        if tk is not None and tk.id not in out:
            out[tk.id] = tk
    return list(out.values())


async def discover_async(roots: list[tuple[str, str]], oql: Any) -> list[Toolkit]:
    """discover() for trio code: files read on a thread, headlines from `await oql.call(...)`."""
    import trio

    found = await trio.to_thread.run_sync(lambda: list(_candidates(roots)))
    out: dict[str, Toolkit] = {}
    for root, origin, dirname, text in found:
        try:
            heads = json.loads(await oql.call("parse_headlines", [text]))
        except ValueError:
            continue
        except WorkbooksError as e:
            if getattr(e, "code", None) in UNAVAILABLE:
                raise  # the pool is busy or gone: an error, not "(not installed)"
            continue  # the kernel refuses this manifest: not a toolkit
        tk = _from_manifest(root, origin, dirname, text, heads)
        if tk is not None and tk.id not in out:
            out[tk.id] = tk
    return list(out.values())


def find(toolkits: list[Toolkit], tid: str) -> Toolkit | None:
    """By discovered id only: an id is never turned into a path (`../git` is simply unknown)."""
    return next((t for t in toolkits if t.id == tid), None) if safe_name(tid) else None


def manifest_text(tk: Toolkit) -> str:
    with _open_toolkit(tk) as d:
        return d.text(MANIFEST)


def skills(tk: Toolkit) -> list[str]:
    """Skill slugs, sorted: `skills/<slug>.org` and `skills/<slug>/SKILL.org` (each once)."""
    found: set[str] = set()
    try:
        with _open_toolkit(tk) as d, d.sub(SKILLS) as s:
            for e in s.entries():
                if e.name.endswith(".org") and e.is_file(follow_symlinks=False) and safe_name(e.name[:-4]):
                    found.add(e.name[:-4])
                elif safe_name(e.name) and e.is_dir(follow_symlinks=False):
                    try:
                        with s.sub(e.name) as thick:
                            if any(x.name == "SKILL.org" and x.is_file(follow_symlinks=False) for x in thick.entries()):
                                found.add(e.name)
                    except OSError:
                        pass
    except OSError:
        return []
    return sorted(found)


def skill_body(tk: Toolkit, slug: str) -> str | None:
    """A skill's text (thin wins over thick), or None: a slug is a bare name, never a path."""
    if not safe_name(slug):
        return None
    try:
        with _open_toolkit(tk) as d, d.sub(SKILLS) as s:
            try:
                return s.text(slug + ".org")
            except OSError:
                pass
            with s.sub(slug) as thick:
                return thick.text("SKILL.org")
    except OSError:
        return None


def captions(body: str) -> list[str]:
    """`#+CAPTION:` lines, indented or not (the original missed indented ones)."""
    return [m.group(1).strip() for m in _CAPTION.finditer(body)]


def _walk_org(d: _Dir, prefix: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every `.org` file under `d`, sorted, no symlinks followed."""
    if depth > MAX_DEPTH:
        return
    for e in d.entries():
        if not safe_name(e.name):
            continue
        if e.is_dir(follow_symlinks=False):
            try:
                with d.sub(e.name) as sub:
                    yield from _walk_org(sub, f"{prefix}/{e.name}", depth + 1)
            except OSError:
                continue
        elif e.name.endswith(".org") and e.is_file(follow_symlinks=False):
            try:
                yield f"{prefix}/{e.name}", d.text(e.name)
            except OSError:
                continue


def _skill_files(tk: Toolkit) -> Iterator[tuple[str, str]]:
    try:
        with _open_toolkit(tk) as d, d.sub(SKILLS) as s:
            yield from _walk_org(s, f"{tk.dirname}/{SKILLS}")
    except OSError:
        return


def search(toolkits: list[Toolkit], query: str) -> list[dict]:
    """Case-insensitive substring (not a pattern) over every skill line: [{path, line, text}]."""
    q = query.lower()
    hits = []
    for tk in sorted(toolkits, key=lambda t: t.id):
        for rel, text in _skill_files(tk):
            for n, line in enumerate(text.split("\n"), 1):
                if q in line.lower():
                    hits.append({"toolkit": tk.id, "path": rel, "line": n, "text": line.strip()})
    return hits


# -- signatures -------------------------------------------------------------------------------------
def canonical_manifest(text: str) -> str:
    """The manifest as signed: its `#+SIGNATURE:` lines removed (the signer's `#+AUTHOR_DID:` stays)."""
    return _SIG_LINE.sub("", text)


def _digest_records(d: _Dir, prefix: str, depth: int, acc: dict, manifest_override: bytes | None) -> None:
    if depth > MAX_DEPTH:
        raise ToolkitError(f"{prefix or '.'}: directories nested deeper than {MAX_DEPTH}")
    for e in d.entries():
        rel = f"{prefix}{e.name}"
        if depth == 0 and e.name == ".git" and e.is_dir(follow_symlinks=False):
            continue  # a toolkit that is a git checkout: its own history is not part of it
        acc["n"] += 1
        if acc["n"] > MAX_ENTRIES:
            raise ToolkitError(f"the toolkit holds more than {MAX_ENTRIES} files")
        h = acc["h"]
        name_b = rel.encode("utf-8", "surrogateescape")
        if e.is_symlink():
            target = os.readlink(e.name, dir_fd=d.fd)
            h.update(b"l\x00" + name_b + b"\x00" + target.encode("utf-8", "surrogateescape") + b"\n")
        elif e.is_dir(follow_symlinks=False):
            h.update(b"d\x00" + name_b + b"\n")
            with _Dir(os.open(e.name, _O_DIR_AT, dir_fd=d.fd)) as sub:
                _digest_records(sub, rel + "/", depth + 1, acc, None)
        elif e.is_file(follow_symlinks=False):
            if depth == 0 and e.name == MANIFEST:
                data = manifest_override if manifest_override is not None else \
                    canonical_manifest(d.text(MANIFEST)).encode("utf-8")
            else:
                fd = os.open(e.name, _O_FILE_AT, dir_fd=d.fd)
                try:
                    fh = hashlib.sha256()
                    while True:
                        chunk = os.read(fd, 1 << 20)
                        if not chunk:
                            break
                        acc["bytes"] += len(chunk)
                        if acc["bytes"] > MAX_SIGNED_BYTES:
                            raise ToolkitError(f"the toolkit is larger than {MAX_SIGNED_BYTES >> 20} MB")
                        fh.update(chunk)
                finally:
                    os.close(fd)
                h.update(b"f\x00" + name_b + b"\x00" + fh.hexdigest().encode() + b"\n")
                continue
            h.update(b"f\x00" + name_b + b"\x00" + hashlib.sha256(data).hexdigest().encode() + b"\n")
        else:
            raise ToolkitError(f"{rel} is not a file, a directory or a symlink")


def digest(tk: Toolkit, *, manifest: str | None = None) -> tuple[str, int]:
    """(sha256 hex, number of entries) over the toolkit's tree: for every entry, sorted by path,
    `kind NUL path NUL value LF` (f: sha256 of the bytes, d: nothing, l: the link's target, never
    followed); manifest.org counts as `canonical_manifest` of it; a top-level `.git/` is left out."""
    acc = {"h": hashlib.sha256(), "n": 0, "bytes": 0}
    override = canonical_manifest(manifest).encode("utf-8") if manifest is not None else None
    with _open_toolkit(tk) as d:
        _digest_records(d, "", 0, acc, override)
    return acc["h"].hexdigest(), acc["n"]


def signed_message(tid: str, digest_hex: str) -> bytes:
    return SIG_DOMAIN + tid.encode("utf-8") + b":" + digest_hex.encode("ascii")


def sign(tk: Toolkit, ident) -> dict:
    """Write `#+AUTHOR_DID:` and `#+SIGNATURE:` into the manifest: the tenant's Ed25519 signature
    over the toolkit's digest. The manifest is replaced atomically (never through a symlink)."""
    did = ident.did
    with _open_toolkit(tk) as d:
        old = d.read(MANIFEST)
        try:
            text = old.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolkitError(f"{tk.id}: manifest.org is not UTF-8") from None
        st = os.stat(MANIFEST, dir_fd=d.fd, follow_symlinks=False)
        unsigned = _SIGN_LINES.sub("", text).rstrip("\n") + f"\n#+AUTHOR_DID: {did}\n"
        dig, n = digest(tk, manifest=unsigned)
        sig = base64.b64encode(ident.sign(signed_message(tk.id, dig))).decode("ascii")
        final = unsigned + f"#+SIGNATURE: {sig}\n"
        _replace_at(d, MANIFEST, final.encode("utf-8"), st.st_mode & 0o777)
    return {"id": tk.id, "did": did, "digest": dig, "files": n, "manifest": os.path.join(tk.dir, MANIFEST)}


def _replace_at(d: _Dir, name: str, data: bytes, mode: int) -> None:
    from workbooks.fsutil import fsync_fd

    tmp = f".{name}.sign{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d.fd)
    try:
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            fsync_fd(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=d.fd, dst_dir_fd=d.fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=d.fd)
        except OSError:
            pass
        raise
    fsync_fd(d.fd)


def provenance(tk: Toolkit) -> dict:
    """{ok, did, digest, reason}: whether the manifest's signature holds for the toolkit's files now.
    reason: no_author_did | no_signature | bad_signature_encoding | invalid_did | bad_signature |
    undigestable (…) (a FIFO or device inside the toolkit, too many or too large files)."""
    from workbooks.ledger.identity import InvalidDid, public_key_from_did, verify_signature

    text = manifest_text(tk)
    did, sig = keyword(text, "AUTHOR_DID"), keyword(text, "SIGNATURE")
    out = {"ok": False, "did": did, "digest": None, "reason": None}
    if did is None:
        return {**out, "reason": "no_author_did"}
    if sig is None:
        return {**out, "reason": "no_signature"}
    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        return {**out, "reason": "bad_signature_encoding"}
    try:
        public_key_from_did(did)
    except InvalidDid:
        return {**out, "reason": "invalid_did"}
    try:
        dig, _ = digest(tk)
    except (ToolkitError, OSError) as e:
        return {**out, "reason": f"undigestable ({getattr(e, 'message', None) or e})"}
    ok = verify_signature(did, signed_message(tk.id, dig), raw)
    return {**out, "ok": ok, "digest": dig, "reason": None if ok else "bad_signature"}


def verify(tk: Toolkit, expected_did: str | None = None, *, pin_note: str | None = None) -> dict:
    """The checks of `wbx toolkit verify`: [{status: ok|fail|info, label}], and ok = no failure.
    Nothing is executed: exec modes, caps and `:role pre` blocks are reported, never run."""
    checks: list[dict] = []

    def add(status: str, label: str) -> None:
        checks.append({"status": status, "label": label})

    add("ok", "manifest.org present")
    add("ok" if "overview" in skills(tk) else "fail", "skills/overview.org present")
    if tk.exec is None and tk.cli_bin is None:
        add("info", "exec: none declared (discovery-only toolkit)")
    else:
        what = f"exec: {tk.exec or 'command'}" + (f" (CLI_BIN {tk.cli_bin})" if tk.cli_bin else "")
        add("info", f"{what} — never run here: toolkit code execution is default-deny")
    if tk.caps:
        add("info", "caps declared: " + " ".join(tk.caps))
    prov = provenance(tk)
    if prov["ok"]:
        add("ok", f"signature valid ({prov['did']})")
        if expected_did is not None and prov["did"] != expected_did:
            add("fail", f"signed by {prov['did']}, not by the expected {expected_did}")
    else:
        hint = " — the toolkit's files changed since it was signed, or the signature is forged" \
            if prov["reason"] == "bad_signature" else ""
        add("fail", f"provenance: {prov['reason']}{hint} (sign with `wbx toolkit sign {tk.id}`)")
    if pin_note:
        add("fail", pin_note)
    n = sum(len(_ROLE_PRE.findall(text)) for _, text in _skill_files(tk))
    if n:
        add("info", f"pre checks DISABLED ({n} block(s); toolkit code is never run here — default-deny)")
    ok = all(c["status"] != "fail" for c in checks)
    return {"id": tk.id, "dir": tk.dir, "ok": ok, "did": prov["did"], "digest": prov["digest"], "checks": checks}


# -- the original's texts ---------------------------------------------------------------------------
MARK = {"ok": "✓", "fail": "✗", "info": "·"}


def list_text(toolkits: list[Toolkit], where: str) -> str:
    if not toolkits:
        return f"(no toolkits under {where})"
    return "\n".join(f"{t.id:<16} {(t.status or '-'):<12} {t.tagline or ''}".rstrip()
                     for t in sorted(toolkits, key=lambda t: t.id))


def show_text(tk: Toolkit) -> str:
    rows = "\n".join("  " + s for s in skills(tk))
    return manifest_text(tk) + f"\n\nSkills (read with `wb toolkit show {tk.id} <skill>`):\n" + rows


def skill_text(body: str) -> str:
    toc = captions(body)
    head = "TOC (CAPTIONs):\n" + "\n".join("  • " + c for c in toc) + "\n\n" if toc else ""
    return head + body


def search_text(hits: list[dict], query: str) -> str:
    if not hits:
        return f"(no matches for {json.dumps(query, ensure_ascii=False)})"
    return "\n".join(f"{h['path']}:{h['line']}: {h['text']}" for h in hits)


def verify_text(result: dict) -> str:
    return "\n".join(f"{MARK[c['status']]} {c['label']}" for c in result["checks"])


def no_such_toolkit(tid: str) -> NotFound:
    return NotFound(f"no such toolkit: {tid}", hint="`wbx toolkit list` shows the toolkits on the search path")


# -- the agent's system prompt ----------------------------------------------------------------------
def _summary(names: list[str], toolkits: list[Toolkit]) -> str:
    if not names:
        return ""
    rows = []
    for name in names:
        shown = "".join(ch for ch in str(name)[:64] if ch.isprintable())
        tk = find(toolkits, name)
        if tk is None:
            rows.append(f"- {shown}: (not installed)")
            continue
        sk = skills(tk)
        head, rest = sk[:INDEX_SKILLS], sk[INDEX_SKILLS:]
        line = f"- {tk.id}: {tk.tagline or '(no tagline)'}"
        if head:
            line += "\n  skills: " + ", ".join(head) + (f" (+{len(rest)} more)" if rest else "")
        rows.append(line)
    return (
        "## Toolkits\n\n"
        "You have these toolkits. Before using one, read the relevant skill — call the\n"
        "`wb` tool: `toolkit show <id> <skill>` (or `toolkit search <query>` to find one).\n\n"
        + "\n".join(rows)
    ).strip()


def toolkit_summary(names: list[str], *, roots: list[tuple[str, str]] | None = None, data_dir: str | None = None,
                    tenant: str | None = None, parse: Callable[[str], list] | None = None) -> str:
    """The index appended to an agent's system prompt for its `:TOOLKITS:` (empty for none): each
    toolkit's tagline and first skills, "(not installed)" for a name not on the search path.
    Skill bodies stay on demand; nothing of a toolkit is run. `roots` defaults to `search_path`
    for `data_dir` (default $WB_DATA) and `tenant`."""
    if not names:
        return ""
    roots = search_path(data_dir=_str(data_dir), tenant=tenant) if roots is None else roots
    return _summary(list(names), discover(roots, parse))


async def toolkit_summary_async(names: list[str], oql: Any, *, roots: list[tuple[str, str]] | None = None,
                                data_dir: str | None = None, tenant: str | None = None) -> str:
    """toolkit_summary for trio code (headlines through `oql`, files read on a thread)."""
    if not names:
        return ""
    import trio

    roots = search_path(data_dir=_str(data_dir), tenant=tenant) if roots is None else roots
    found = await discover_async(roots, oql)
    return await trio.to_thread.run_sync(_summary, list(names), found)


def _str(p) -> str | None:
    return None if p is None else os.fspath(p)


def system_prompt_with_toolkits(prompt: str, summary: str) -> str:
    """The agent's prompt with the toolkit index appended (as the original: a blank line between)."""
    return prompt + "\n\n" + summary if summary else prompt


def check_did(did: str) -> str:
    from workbooks.ledger.identity import InvalidDid, public_key_from_did

    try:
        public_key_from_did(did)
    except InvalidDid as e:
        raise UsageError(f"--did: {e.message}") from None
    return did


# -- the agent's `wb toolkit …` ---------------------------------------------------------------------
AGENT_USAGE = "usage: toolkit list | toolkit show <id> [<skill>] | toolkit search <query>"


async def agent_command(words: list[str], *, oql: Any, data_dir, tenant: str | None) -> tuple[str, int]:
    """`toolkit list|show ID [SKILL]|search QUERY` for the agent's `wb` tool (what the prompt index
    tells it to call): (the original's text, exit code). Read-only (no sign/verify for the model),
    and no host path in the answer."""
    import trio

    verb, rest = (words[0], list(words[1:])) if words else ("", [])
    if verb not in ("list", "show", "search") or (verb == "list" and rest) or \
            (verb == "show" and not 1 <= len(rest) <= 2) or (verb == "search" and not rest):
        return AGENT_USAGE, 2
    roots = search_path(data_dir=_str(data_dir), tenant=tenant)
    found = await discover_async(roots, oql)

    def answer() -> tuple[str, int]:
        if verb == "list":
            return (list_text(found, "") if found else "(no toolkits installed)"), 0
        if verb == "search":
            return search_text(search(found, " ".join(rest)), " ".join(rest)), 0
        t = find(found, rest[0])
        if len(rest) == 1:
            return (show_text(t), 0) if t is not None else (f"no such toolkit: {rest[0]}", 4)
        body = skill_body(t, rest[1]) if t is not None else None
        return (skill_text(body), 0) if body is not None else (f"no such skill: {rest[0]}/{rest[1]}", 4)

    return await trio.to_thread.run_sync(answer)
