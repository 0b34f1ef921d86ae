"""Evaluation text: named corpora split into fixed, disjoint parts, tokenized per model.

Built-in corpora (``compress.corpora``): ``lee-news`` (the default) and ``enwiki``; or a local
.txt/.jsonl file, or ``hf:NAME``. Splits are taken by document, so they are disjoint for every
tokenizer: ``calibration`` (the first 20% of the documents: 60 of Lee news), ``search`` (the next
40%) and ``holdout`` (the last 40%).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from common.errors import DatasetError
from compress.corpora import BUILTIN, BUILTIN_DATASETS

Split = Literal["calibration", "search", "holdout"]
SPLITS: tuple[Split, ...] = ("calibration", "search", "holdout")
SPLIT_FRACTIONS: dict[Split, tuple[float, float]] = {
    "calibration": (0.0, 0.2),
    "search": (0.2, 0.6),
    "holdout": (0.6, 1.0),
}


def _read_local(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    if path.suffix == ".jsonl":
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DatasetError(f"{path}:{number}: each line needs a string field 'text'")
            docs.append(record["text"])
        return docs
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        return [part for part in re.split(r"\n\s*\n", text) if part.strip()]
    raise DatasetError(f"dataset file {path} must be .txt (documents separated by blank lines) or .jsonl")


def _read_hf(spec: str) -> list[str]:
    """``hf:name[:config]`` — a Hugging Face dataset's train split, field ``text`` (needs a reachable hub)."""
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"{spec}: Hugging Face datasets need `pip install datasets`") from None
    parts = spec.removeprefix("hf:").split(":")
    try:
        dataset = datasets.load_dataset(*parts, split="train")
    except Exception as exc:
        raise DatasetError(f"{spec}: cannot load ({type(exc).__name__}: {exc})") from None
    return [row["text"] for row in dataset if row.get("text", "").strip()]


@lru_cache(maxsize=8)
def load_documents(dataset: str) -> tuple[str, ...]:
    if dataset in BUILTIN:
        docs = BUILTIN[dataset]()
    elif dataset.startswith("hf:"):
        docs = _read_hf(dataset)
    else:
        candidate = Path(dataset).expanduser()
        if candidate.suffix not in (".txt", ".jsonl") and not candidate.exists():
            raise DatasetError(f"unknown dataset {dataset!r} (use {', '.join(BUILTIN_DATASETS)}, "
                               "a .txt/.jsonl file, or hf:NAME)")
        docs = _read_local(candidate)
    if len(docs) < 3:
        raise DatasetError(f"dataset {dataset!r} has {len(docs)} documents; at least 3 are needed for 3 splits")
    return tuple(docs)


def split_documents(dataset: str, split: Split) -> list[str]:
    if split not in SPLIT_FRACTIONS:
        raise DatasetError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    docs = load_documents(dataset)
    lo, hi = SPLIT_FRACTIONS[split]
    return list(docs[round(lo * len(docs)) : round(hi * len(docs))])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(f"{type(tokenizer).__name__}-{len(vocab)}".encode())
    for token, index in sorted(vocab.items(), key=lambda item: item[1])[:2000]:
        digest.update(f"{token}{index}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TokenStream:
    """The token ids of one split, documents joined with the EOS token (or a newline)."""

    dataset: str
    split: Split
    ids: torch.Tensor  # 1-D int64

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.ids.numpy().tobytes()).hexdigest()[:16]
        return f"{self.dataset}-{self.split}-{digest}"

    def take(self, n_tokens: int) -> torch.Tensor:
        if n_tokens < 2:
            raise DatasetError(f"--tokens must be at least 2, got {n_tokens}")
        if n_tokens > self.ids.numel():
            raise DatasetError(
                f"split {self.split!r} of {self.dataset!r} has {self.ids.numel()} tokens, "
                f"fewer than the {n_tokens} requested"
            )
        return self.ids[:n_tokens]


_STREAMS: dict[tuple[str, str, str], TokenStream] = {}


def token_stream(dataset: str, split: Split, tokenizer: Any) -> TokenStream:
    key = (dataset, split, tokenizer_fingerprint(tokenizer))
    if key not in _STREAMS:
        docs = split_documents(dataset, split)
        separator = tokenizer.eos_token or "\n\n"
        text = separator.join(docs)
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        if len(ids) < 2:
            raise DatasetError(f"split {split!r} of {dataset!r} is empty after tokenization")
        _STREAMS[key] = TokenStream(dataset, split, torch.tensor(ids, dtype=torch.long))
    return _STREAMS[key]
