"""The compressible linear layers of a transformer: the Linear modules inside its repeated blocks.

Embeddings, the LM head and norms are not compressed; ``params_linear`` counts what is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")

# Projection type from the module's own name (Llama/Mistral/Qwen and BERT naming).
_TYPES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down",
}
PROJECTION_TYPES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class LinearLayer:
    name: str
    block: int
    type: str
    in_features: int
    out_features: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features

    @property
    def full_rank(self) -> int:
        return min(self.in_features, self.out_features)


def projection_type(name: str) -> str:
    for suffix, kind in _TYPES.items():
        if name.endswith(suffix):
            return kind
    return name.rsplit(".", 1)[-1]


def block_prefix(name: str) -> str | None:
    """The name of the numbered block module ``name`` sits in (``model.layers.3``), or None."""
    match = _BLOCK.search(name)
    return None if match is None else name[: match.end() - 1].lstrip(".")


def linear_layers(model: nn.Module) -> list[LinearLayer]:
    """Every nn.Linear inside a numbered block, in module order."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        match = _BLOCK.search(name)
        if match is None:
            continue
        found.append(LinearLayer(name, int(match.group(1)), projection_type(name),
                                 module.in_features, module.out_features))
    return found


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
