"""A reconstruction operator's per-(layer, setting) results, computed once and kept on disk.

SparseGPT and GPTQ rebuild a layer from the dense weight and the calibration Gram; the result
depends on the setting, so it cannot be derived from a cached score as Wanda's mask is. Each
(layer, setting) is computed once and written beside the other per-model caches
(``<stats cache>/<directory>/<layer>-<key>.safetensors``); every later trial, process and worker
that asks for it loads the file. In memory only each layer's latest setting is kept (a search
walks many settings; the rest stay on disk).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from compress.operators.base import LayerContext


def layer_result(ctx: LayerContext, owner: str, directory: str, name: str, key: str,
                 compute: Callable[[], dict[str, Tensor]], *, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The tensors ``compute()`` gives for layer ``name`` at setting ``key``: from memory, disk, or computed.

    ``owner`` names the handler's in-memory cache (``ctx.handler_cache``); ``key`` must name
    everything the result depends on besides the model and the calibration data (which the cache
    directory already names). A file is loaded onto ``device`` (the model's).
    """
    memo = ctx.handler_cache(owner)
    cached = memo.get(name)
    if isinstance(cached, tuple) and cached[0] == key:
        tensors: dict[str, Tensor] = cached[1]
        return tensors
    path = _path(ctx, directory, name, key)
    if path.is_file():
        tensors = load_file(str(path), device=str(device))
    else:
        tensors = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        save_file({part: tensor.contiguous().cpu() for part, tensor in tensors.items()}, str(tmp))
        tmp.replace(path)
    memo[name] = (key, tensors)
    return tensors


def _path(ctx: LayerContext, directory: str, name: str, key: str) -> Path:
    return ctx.cache_dir / directory / f"{name}-{key}.safetensors"
