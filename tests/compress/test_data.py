from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import DatasetError
from compress.data import SPLITS, load_documents, split_documents, token_stream


def test_lee_news_is_the_real_corpus() -> None:
    docs = load_documents("lee-news")
    assert len(docs) == 300
    assert sum(len(doc.split()) for doc in docs) > 50_000


def test_enwiki_is_encyclopedia_prose_without_markup() -> None:
    docs = load_documents("enwiki")
    assert len(docs) == 100
    assert all(len(doc) >= 2000 for doc in docs)
    assert sum(len(doc.split()) for doc in docs) > 400_000
    text = "\n".join(docs)
    for markup in ("[[", "]]", "{{", "\'\'\'", "==", "<ref", "#REDIRECT"):
        assert markup not in text, markup
    assert docs[1].startswith("Autism is a neurodevelopmental disorder")
    parts = [split_documents("enwiki", split) for split in SPLITS]
    assert [len(p) for p in parts] == [20, 40, 40]
    assert not set(parts[0]) & set(docs[20:])  # no calibration article among search and holdout


def test_splits_are_disjoint_cover_everything_and_are_stable() -> None:
    parts = {split: split_documents("lee-news", split) for split in SPLITS}
    assert sum(len(p) for p in parts.values()) == 300
    assert [len(parts[s]) for s in SPLITS] == [60, 120, 120]
    seen: set[str] = set()
    for docs in parts.values():
        assert not seen & set(docs)
        seen |= set(docs)
    assert parts["search"][0] == load_documents("lee-news")[60]
    assert split_documents("lee-news", "holdout") == parts["holdout"]


def test_token_stream_is_deterministic(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    a = token_stream("lee-news", "search", tiny_llama.tokenizer)
    b = token_stream("lee-news", "search", tiny_llama.tokenizer)
    assert a.ids.equal(b.ids)
    assert a.take(100).numel() == 100
    with pytest.raises(DatasetError, match="fewer than"):
        a.take(a.ids.numel() + 1)
    with pytest.raises(DatasetError, match="at least 2"):
        a.take(0)


def test_local_files(tmp_path: Path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    txt = tmp_path / "t.txt"
    txt.write_text("\n\n".join(f"document number {i} says something" for i in range(10)))
    assert len(load_documents(str(txt))) == 10
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(5)))
    assert split_documents(str(jsonl), "holdout") == ["doc 3", "doc 4"]
    assert token_stream(str(jsonl), "search", tiny_llama.tokenizer).ids.numel() > 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "at least 3"),
        ("only one document", "at least 3"),
    ],
)
def test_empty_or_short_datasets_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / f"d{len(content)}.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_documents(str(path))


def test_bad_dataset_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_documents("wikitext-2")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n{"text": "c"}\n')
    with pytest.raises(DatasetError, match=":2: each line needs"):
        load_documents(str(bad))
    with pytest.raises(DatasetError, match="does not exist"):
        load_documents(str(tmp_path / "none.txt"))
