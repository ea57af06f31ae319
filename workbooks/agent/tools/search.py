"""search {query}: recall by relevance over the working dir's Org and text files (the files are the memory).

Chunks are Org sections (a headline and its body, up to the next headline of any level; the text
before the first headline is one more, titled by `#+TITLE:` or the file name), Markdown sections
likewise, and paragraphs of other text files. They are ranked by BM25 (the `bm25s` library,
English stop words dropped) against the query; the top 5 with a positive score are answered as the
original did: `[<path>] <headline>` then two spaces and the first 240 characters of the text on one
line. Nothing relevant: "(no relevant context found)".

Bounded, so a large or hostile working dir cannot make a call slow: `.git`, `.workbooks`, `.jj`,
`node_modules` are skipped, symlinks are never followed, a file over 2 MiB or not UTF-8 is
skipped, and at most 2,000 files / 32 MiB / 50,000 chunks are indexed per call, after looking at
no more than 50,000 directory entries.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer, off_loop, str_arg

TOP_K = 5
SNIPPET = 240
MAX_FILE_BYTES = 2 << 20
MAX_FILES = 2000
MAX_TOTAL_BYTES = 32 << 20
MAX_CHUNKS = 50_000
MAX_ENTRIES = 50_000  # directory entries looked at (a tree of a million files is not walked whole)
MAX_QUERY = 2000
SKIP_DIRS = frozenset({".git", ".workbooks", ".jj", "node_modules", "__pycache__", ".venv"})
ORG = frozenset({".org"})
MARKDOWN = frozenset({".md", ".markdown"})
TEXT = frozenset({
    ".txt", ".text", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".html", ".htm", ".xml", ".css", ".js", ".mjs", ".ts", ".py", ".rs", ".go", ".ex", ".exs",
    ".sh", ".sql", ".c", ".h", ".java", ".rb", ".lua", ".tex",
})
NONE_FOUND = "(no relevant context found)"

_ORG_HEADLINE = re.compile(r"^(\*+)[ \t]+(.*)$")
_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
_ORG_TAGS = re.compile(r"[ \t]+:[\w@#%:]+:[ \t]*$")
_TITLE = re.compile(r"^[ \t]*#\+title:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_DRAWER_OPEN = re.compile(r"^[ \t]*:(PROPERTIES|LOGBOOK):[ \t]*$", re.IGNORECASE)
_DRAWER_END = re.compile(r"^[ \t]*:END:[ \t]*$", re.IGNORECASE)
_BLANKS = re.compile(r"\n[ \t]*\n+")
_SPACE = re.compile(r"\s+")


@dataclass
class Chunk:
    path: str
    headline: str
    text: str


def _sections(rel: str, text: str, heading: re.Pattern, preamble_title: str, drawers: bool = False) -> list[Chunk]:
    """Sections split at `heading` lines; Org property and logbook drawers are left out."""
    out: list[Chunk] = []
    title, body = preamble_title, []
    in_drawer = False

    def flush() -> None:
        b = "\n".join(body).strip()
        if b or title != preamble_title:
            out.append(Chunk(rel, title, b))

    for line in text.split("\n"):
        m = heading.match(line)
        if m:
            flush()
            title = _ORG_TAGS.sub("", m.group(2)).strip() or m.group(1)
            body = []
            in_drawer = False
        elif drawers and (in_drawer or _DRAWER_OPEN.match(line)):
            in_drawer = not _DRAWER_END.match(line)
        else:
            body.append(line)
    flush()
    return out


def chunks_of(rel: str, suffix: str, text: str) -> list[Chunk]:
    """The retrievable pieces of one file."""
    if suffix in ORG:
        m = _TITLE.search(text)
        return _sections(rel, text, _ORG_HEADLINE, (m.group(1).strip() if m else "") or Path(rel).name, drawers=True)
    if suffix in MARKDOWN:
        return _sections(rel, text, _MD_HEADING, Path(rel).name)
    out = []
    for para in _BLANKS.split(text):
        para = para.strip()
        if para:
            first = para.split("\n", 1)[0].strip()
            out.append(Chunk(rel, first[:80], para))
    return out


def _entries(root: str):
    """(full path, name) of the regular-looking files under `root`, depth first in name order,
    never following a symlink, skipping SKIP_DIRS, stopping after MAX_ENTRIES directory entries
    (a directory is read lazily, so a million-entry one is not listed whole)."""
    seen = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        files, dirs = [], []
        with it:
            for e in it:
                seen += 1
                if seen > MAX_ENTRIES:
                    break
                try:
                    if e.is_dir(follow_symlinks=False):
                        if e.name not in SKIP_DIRS:
                            dirs.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        files.append((e.path, e.name))
                except OSError:
                    continue
        yield from sorted(files, key=lambda f: f[1])
        if seen > MAX_ENTRIES:
            return
        stack.extend(sorted(dirs, reverse=True))


def collect(workdir: Path) -> list[Chunk]:
    """Every chunk of the working dir's searchable files, within the bounds above."""
    root = os.path.realpath(workdir)
    chunks: list[Chunk] = []
    files = total = 0
    for full, name in _entries(root):
        suffix = os.path.splitext(name)[1].lower()
        if suffix not in ORG and suffix not in MARKDOWN and suffix not in TEXT:
            continue
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
                continue  # symlinks, FIFOs, devices and big files are not read
            if total + st.st_size > MAX_TOTAL_BYTES:
                return chunks
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                raw = os.read(fd, MAX_FILE_BYTES + 1)
            finally:
                os.close(fd)
            text = raw[:MAX_FILE_BYTES].decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        files += 1
        total += len(raw)
        rel = os.path.relpath(full, root).replace(os.sep, "/")
        chunks.extend(chunks_of(rel, suffix, text))
        if files >= MAX_FILES or len(chunks) >= MAX_CHUNKS:
            return chunks[:MAX_CHUNKS]
    return chunks


def rank(chunks: list[Chunk], query: str, k: int = TOP_K) -> list[Chunk]:
    """The `k` best chunks for `query` by BM25, only those sharing a term with it."""
    if not chunks or not query.strip():
        return []
    import bm25s
    from bm25s.tokenization import Tokenizer

    tok = Tokenizer(stopwords="en")
    docs = [f"{c.headline}\n{c.headline}\n{c.text}" for c in chunks]  # the headline counts twice
    ids = tok.tokenize(docs, update_vocab=True, return_as="ids", show_progress=False)
    q = tok.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)
    if not any(t for t in q[0] if t != tok.get_vocab_dict().get("", -1)):
        return []
    retriever = bm25s.BM25()
    retriever.index(ids, show_progress=False)
    found, scores = retriever.retrieve(q, k=min(k, len(chunks)), show_progress=False)
    return [chunks[int(i)] for i, s in zip(found[0], scores[0]) if s > 0]


def format_hits(hits: list[Chunk]) -> str:
    if not hits:
        return NONE_FOUND
    return "\n".join(f"[{h.path}] {h.headline}\n  {_SPACE.sub(' ', h.text)[:SNIPPET].strip()}" for h in hits)


def search_dir(workdir: Path, query: str, k: int = TOP_K) -> str:
    return format_hits(rank(collect(workdir), query[:MAX_QUERY], k))


class Search:
    name = "search"
    description = (
        "Recall what is known: ranked search (BM25) over the Org and text files in your working dir — "
        "the files are the memory. Returns the 5 most relevant sections with their path. To remember "
        "something, write it to an .org file with vfs_write; it is searchable at once. "
        'e.g. query="how do we handle auth headers".'
    )
    parameters = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        query = str_arg(args, "query") or ""
        return answer(ctx, await off_loop(search_dir, ctx.workdir, query))


SEARCH = Search()
