"""Hugging Face checkpoint files: write weights (a chosen dtype, sharded with an index) and read them back.

``save_pretrained`` writes ``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` shards plus
``model.safetensors.index.json`` once the weights pass ``max_shard_size``; every loader that reads
Hugging Face checkpoints (transformers, vLLM) takes either layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from common.errors import CorruptCheckpointError

INDEX_NAME = "model.safetensors.index.json"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHARD_SIZE = "2GB"


def save_weights(model: nn.Module, directory: Path, *, dtype: torch.dtype | None = None,
                 max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> None:
    """config.json, generation_config.json and the weights, floating tensors cast to ``dtype``.

    Integer tensors (packed codes) are never cast. Tensors that share storage (an LM head tied to the
    embeddings) stay shared, so they are still written once.
    """
    cast: dict[int, Tensor] = {}

    def to_dtype(tensor: Tensor) -> Tensor:
        if dtype is None or not tensor.is_floating_point():
            return tensor
        key = tensor.data_ptr()
        if key not in cast:
            cast[key] = tensor.detach().to(dtype)
        return cast[key]

    state = {name: to_dtype(tensor) for name, tensor in model.state_dict().items()}
    model.save_pretrained(directory, state_dict=state, safe_serialization=True,  # type: ignore[operator]
                          max_shard_size=max_shard_size)
    if dtype is not None:
        path = directory / "config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data["dtype"] = str(dtype).removeprefix("torch.")
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, or ``model.safetensors``."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCheckpointError(f"{index} is not a valid shard index ({exc})") from None
        return [directory / shard for shard in shards]
    return [directory / "model.safetensors"]


def load_weights(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint in ``directory``; a one-line CorruptCheckpointError if a file is bad."""
    state: dict[str, Tensor] = {}
    for file in weight_files(directory):
        if not file.is_file():
            raise CorruptCheckpointError(f"checkpoint {file} is missing")
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptCheckpointError(f"checkpoint {file} is truncated or corrupt ({exc})") from None
    return state


def files_bytes(directory: Path) -> int:
    return sum(file.stat().st_size for file in weight_files(directory))
