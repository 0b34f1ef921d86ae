"""Calibration statistics gathered once with forward hooks: each linear layer's input Gram matrix.

Gram G = XᵀX over all calibration tokens (float64 while accumulating). Wanda's input feature norm
is sqrt(diag(G)); whitened SVD uses the Cholesky factor of G. Layers that read the very same input
tensor (q/k/v; gate/up) share one Gram matrix, stored once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.layers import LinearLayer


@dataclass
class CalibrationStats:
    grams: dict[str, torch.Tensor]  # group leader name -> [in, in] float32
    leader: dict[str, str]  # layer name -> group leader name
    n_tokens: int
    seconds: float

    def gram(self, layer: str) -> torch.Tensor:
        return self.grams[self.leader[layer]]

    def input_norm(self, layer: str) -> torch.Tensor:
        return self.gram(layer).diagonal().clamp_min(0).sqrt()


@torch.inference_mode()
def collect_stats(
    model: nn.Module, layers: list[LinearLayer], tokens: torch.Tensor, seq_len: int = 512
) -> CalibrationStats:
    start = time.perf_counter()
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    leader: dict[str, str] = {}
    # data_ptr of an input seen in this forward -> (the tensor, kept alive so the address is not reused; owner)
    seen_inputs: dict[int, tuple[torch.Tensor, str]] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            x = inputs[0]
            key = x.data_ptr()
            seen = seen_inputs.get(key)
            if seen is not None and seen[1] != name and seen[0].shape == x.shape:
                leader[name] = seen[1]
                return
            seen_inputs[key] = (x, name)
            leader[name] = name
            flat = x.reshape(-1, x.shape[-1]).float()
            update = (flat.T @ flat).double()  # one chunk in float32 (fast), the running sum in float64
            gram = grams.get(name)
            grams[name] = update if gram is None else gram + update

        return hook

    handles = [modules[layer.name].register_forward_hook(hook_for(layer.name)) for layer in layers]
    n_tokens = 0
    try:
        for i in range(0, tokens.numel(), seq_len):
            chunk = tokens[i : i + seq_len]
            if chunk.numel() < 2:
                continue
            seen_inputs.clear()
            model(input_ids=chunk[None])
            n_tokens += chunk.numel()
    finally:
        for handle in handles:
            handle.remove()
    return CalibrationStats(
        {name: g.float() for name, g in grams.items()}, leader, n_tokens, time.perf_counter() - start
    )
