"""wbx loadtest's payload corpus: the shipped Org pieces are real, valid documents in every size
class, weights and the hostile share are honoured exactly, a user's directory is classified by
size, and bad corpora or weights are clear usage errors."""

from __future__ import annotations

import random
from collections import Counter
from importlib import resources

import pytest

from workbooks.errors import UsageError
from workbooks.loadtest.corpus import CLASSES, HOSTILE, WHEEL_SLOTS, Corpus, size_class
from workbooks.loadtest.hostile import FAMILIES
from workbooks.oql import Kernel


def test_shipped_corpus_has_every_class_and_is_package_data():
    c = Corpus.load()
    d = c.describe()
    assert set(d["classes"]) == set(CLASSES)
    for cls in CLASSES:
        for doc in c.docs[cls]:
            assert size_class(len(doc.body)) == cls
    names = {doc.name for docs in c.docs.values() for doc in docs}
    assert "demo.org" in names
    # shipped under the package (resources, not a path into tests/), a few hundred KB in all
    shipped = [p.name for p in resources.files("workbooks.loadtest").joinpath("corpus").iterdir() if p.name.endswith(".org")]
    assert len(shipped) == d["files"] - 1
    assert 200_000 < d["bytes"] < 600_000
    # the installed wheel ships them: the package-data globs name the corpus directory
    import tomllib
    from pathlib import Path

    pp = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "corpus/*.org" in pp["tool"]["setuptools"]["package-data"]["*"]


def test_shipped_pieces_are_valid_org_cut_at_headlines():
    k = Kernel(deadline_ms=20000)
    c = Corpus.load()
    for docs in c.docs.values():
        for doc in docs:
            text = doc.text
            heads = k.parse_headlines(text)
            assert heads, doc.name  # every piece holds whole sections
            first_line = next(line for line in text.splitlines() if line.startswith("*"))
            assert first_line.lstrip("*").startswith(" ")
            errors = [d for d in k.validate(text) if d["level"] == "error"]
            assert errors == [], (doc.name, errors[:3])
            assert "<h" in k.render(text)


def test_weights_are_exact_on_the_wheel_and_picks_follow_them():
    c = Corpus.load(sizes={"S": 3, "M": 1}, hostile_share=0.1, seed=7)
    wheel = c.wheel(7)
    counts = Counter(d.size_class for d in wheel)
    assert len(wheel) == WHEEL_SLOTS
    assert set(counts) == {"S", "M", HOSTILE}
    assert abs(counts[HOSTILE] - 0.1 * WHEEL_SLOTS) <= 1
    assert abs(counts["S"] - 0.675 * WHEEL_SLOTS) <= 1 and abs(counts["M"] - 0.225 * WHEEL_SLOTS) <= 1
    assert wheel == c.wheel(7) and wheel != c.wheel(8)  # a pure function of the seed
    hostile_names = {d.name for d in wheel if d.size_class == HOSTILE}
    assert hostile_names == {f"hostile:{n}" for n in FAMILIES}  # every family is in the mix
    rng = random.Random(1)
    picks = Counter(c.pick(rng).size_class for _ in range(20000))
    assert 0.08 < picks[HOSTILE] / 20000 < 0.12
    assert 2.4 < picks["S"] / picks["M"] < 3.7
    d = c.describe()
    assert d["weights"] == {"S": 0.675, "M": 0.225, "L": 0.0, "XL": 0.0, HOSTILE: 0.1}
    assert d["classes"]["L"]["weight"] == 0  # present, not used


def test_user_directory_is_classified_by_size(tmp_path):
    (tmp_path / "small.org").write_text("* a\nhello\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.org").write_text("* b\n" + "word " * 2000)
    (tmp_path / "notes.txt").write_text("ignored")
    c = Corpus.load(tmp_path)
    d = c.describe()
    assert d["files"] == 2 and set(d["classes"]) == {"S", "M"}
    assert {doc.name for doc in c.docs["M"]} == {"sub/mid.org"}
    assert d["weights"]["S"] == pytest.approx(0.5 / 0.8)


@pytest.mark.parametrize("setup,kw,needle", [
    (lambda p: None, {}, "no .org file"),
    (lambda p: (p / "a.org").write_bytes(b"* \xff\xfe bad\n"), {}, "not UTF-8"),
    (lambda p: (p / "a.org").write_text("* a\n"), {"sizes": {"XL": 1}}, "no XL document"),
    (lambda p: (p / "a.org").write_text("* a\n"), {"sizes": {"XXL": 1}}, "unknown size class"),
    (lambda p: (p / "a.org").write_text("* a\n"), {"sizes": {"S": 0}}, "every size weight is 0"),
    (lambda p: (p / "a.org").write_text("* a\n"), {"sizes": {"S": -1}}, "must be a finite number"),
    (lambda p: (p / "a.org").write_text("* a\n"), {"hostile_share": 1.5}, "within 0..1"),
])
def test_bad_corpora_are_usage_errors(tmp_path, setup, kw, needle):
    setup(tmp_path)
    with pytest.raises(UsageError) as ei:
        Corpus.load(tmp_path, **kw)
    assert needle in ei.value.message


def test_missing_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a directory"):
        Corpus.load(tmp_path / "nope")
