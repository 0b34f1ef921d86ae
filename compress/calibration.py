"""Calibration statistics gathered once with forward hooks: each linear layer's input Gram matrix.

Gram G = XᵀX over all calibration tokens (float32 when stored, whatever the model's dtype). While
accumulating, the running sum is float64 for layers of up to ``FLOAT64_MAX_INPUTS`` inputs; a wider
layer's sum is float32 (a 1B Llama's 8192-input down_proj: 0.25 GB instead of 0.5 GB, and no
second copy when it is stored). Each chunk's product is float32 either way, and a sum of a few
dozen chunks in float32 adds a rounding error of the order of the products' own. Wanda's input
feature norm is sqrt(diag(G)); whitened SVD uses the Cholesky factor of G. Layers that read the
very same input tensor (q/k/v; gate/up) share one Gram matrix, stored once.

Block by block: the calibration tokens are run up to the first transformer block once, then each
block in turn takes the previous block's outputs (every sequence's hidden states are kept, a few MiB)
and only that block's Grams are accumulated, handed to ``on_block`` (which writes them to disk) and
dropped. So the Grams of a whole model are never in memory at once, which matters from ~1B
parameters on (a 1B Llama's Grams take twice the model's bfloat16 bytes). The inputs each block
sees are exactly those of a whole-model forward pass. A model whose blocks cannot be found (no
numbered ``ModuleList`` holding every layer) is run whole, with every hook at once.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from common.progress import StepCounts
from compress import heap
from compress.device import model_device
from compress.layers import LinearLayer, block_prefix
from compress.spooled_safetensors import write_tensors

BlockGrams = Callable[[dict[str, torch.Tensor]], None]  # one block's Grams (leader -> float32, on CPU)
INDEX = "index.json"
_GRAM_BAND = 2048  # rows of a Gram updated at once
FLOAT64_MAX_INPUTS = 4096  # wider layers accumulate their Gram in float32 (see the module's docstring)


class GramFiles(Mapping[str, torch.Tensor]):
    """Grams read from per-block safetensors files on first use; kept in memory only if ``keep``."""

    def __init__(self, directory: Path, files: dict[str, str], *, keep: bool,
                 loaded: dict[str, torch.Tensor] | None = None) -> None:
        self.directory = directory
        self.files = files  # leader -> file name
        self.keep = keep
        self._loaded: dict[str, torch.Tensor] = dict(loaded or {}) if keep else {}

    def __getitem__(self, leader: str) -> torch.Tensor:
        cached = self._loaded.get(leader)
        if cached is not None:
            return cached
        gram = self._read(leader)
        if self.keep:
            self._loaded[leader] = gram
        return gram

    def owned(self, leader: str) -> torch.Tensor:
        """The Gram as a tensor nobody else holds: read afresh, or copied from memory if kept there."""
        cached = self._loaded.get(leader)
        return cached.clone() if cached is not None else self._read(leader)

    def _read(self, leader: str) -> torch.Tensor:
        with safe_open(str(self.directory / self.files[leader]), framework="pt") as fh:
            return fh.get_tensor(leader)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class CalibrationStats:
    grams: Mapping[str, torch.Tensor]  # group leader name -> [in, in] float32, on CPU
    leader: dict[str, str]  # layer name -> group leader name
    n_tokens: int
    seconds: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where gram() hands them out
    _norms: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def gram(self, layer: str) -> torch.Tensor:
        return self.grams[self.leader[layer]].to(self.device)

    def owned_gram(self, layer: str) -> torch.Tensor:
        """Like ``gram``, but the caller's own tensor, free to overwrite (e.g. by an in-place inverse)."""
        leader = self.leader[layer]
        grams = self.grams
        gram = grams.owned(leader) if isinstance(grams, GramFiles) else grams[leader].clone()
        return gram.to(self.device)

    def input_norm(self, layer: str) -> torch.Tensor:
        leader = self.leader[layer]
        if leader not in self._norms:
            self._norms[leader] = self.grams[leader].diagonal().clamp_min(0).sqrt().to(self.device)
        return self._norms[leader]

    # -- on disk: one safetensors file per block plus an index ------------------------------------
    @classmethod
    def collect_to(cls, directory: Path, model: nn.Module, layers: list[LinearLayer], tokens: torch.Tensor,
                   *, keep_in_memory: bool, seq_len: int = 512, on_stage: StepCounts | None = None) -> CalibrationStats:
        """Collect block by block, writing each block's Grams to ``directory`` as it finishes."""
        directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        kept: dict[str, torch.Tensor] = {}

        def write(grams: dict[str, torch.Tensor]) -> None:
            name = f"block-{len(set(files.values())):04d}.safetensors"
            tmp = directory / f".{name}.{time.monotonic_ns()}.tmp"
            write_tensors(tmp, grams)  # from the Grams' own memory: save_file would copy them all first
            tmp.replace(directory / name)
            files.update(dict.fromkeys(grams, name))
            if keep_in_memory:
                kept.update(grams)

        stats = collect_stats(model, layers, tokens, seq_len, on_block=write, on_stage=on_stage)
        index = {"leader": stats.leader, "files": files, "n_tokens": stats.n_tokens, "seconds": stats.seconds}
        tmp = directory / f".{INDEX}.{time.monotonic_ns()}.tmp"
        tmp.write_text(json.dumps(index))
        tmp.replace(directory / INDEX)  # written last: a directory without it is an unfinished collection
        stats.grams = GramFiles(directory, files, keep=keep_in_memory, loaded=kept)
        return stats

    @classmethod
    def load(cls, directory: Path, *, keep_in_memory: bool, device: torch.device) -> CalibrationStats | None:
        """Finished statistics in ``directory``, or None when there are none (or they are unfinished)."""
        path = directory / INDEX
        if not path.is_file():
            return None
        index = json.loads(path.read_text())
        grams = GramFiles(directory, index["files"], keep=keep_in_memory)
        return cls(grams, index["leader"], int(index["n_tokens"]), float(index["seconds"]), device)


def _blocks(model: nn.Module, layers: list[LinearLayer]) -> list[tuple[nn.Module, list[LinearLayer]]] | None:
    """The transformer blocks in order, each with its layers, if every layer sits in one numbered block."""
    if not layers:
        return None
    modules = dict(model.named_modules())
    by_block: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        prefix = block_prefix(layer.name)
        if prefix is None:
            return None
        by_block.setdefault(prefix, []).append(layer)
    parents = {prefix.rsplit(".", 1)[0] for prefix in by_block}
    if len(parents) != 1:
        return None
    parent = modules.get(next(iter(parents)))
    if not isinstance(parent, nn.ModuleList):
        return None
    prefix_of = {id(module): name for name, module in modules.items()}
    return [(block, by_block.get(prefix_of[id(block)], [])) for block in parent]


class _Stop(Exception):
    """Raised by the hook on the first block once it has its inputs: the rest of the forward is not needed."""


def _first_block_inputs(model: nn.Module, first: nn.Module,
                        chunks: list[torch.Tensor]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def catch(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((args, kwargs))
        raise _Stop

    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for chunk in chunks:
            with contextlib.suppress(_Stop):
                model(input_ids=chunk[None], **extra)
    finally:
        handle.remove()
    return captured


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any],
                 hidden: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return ((hidden, *args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": hidden})


@torch.inference_mode()
def collect_stats(
    model: nn.Module, layers: list[LinearLayer], tokens: torch.Tensor, seq_len: int = 512,
    *, on_block: BlockGrams | None = None, on_stage: StepCounts | None = None,
) -> CalibrationStats:
    """Grams of every layer's inputs over ``tokens`` (cut into ``seq_len`` sequences).

    With ``on_block``, each block's Grams go to it as the block finishes and are not kept: the
    returned stats then hold none (``grams`` is empty). Without, they are all returned.
    ``on_stage(done, total)``: progress in stages (the blocks; one stage for a model run whole).
    """
    start = time.perf_counter()
    device = model_device(model)
    modules = dict(model.named_modules())
    kept: dict[str, torch.Tensor] = {}
    leader: dict[str, str] = {}
    grams: dict[str, torch.Tensor] = {}  # the Grams being accumulated (float64, or float32 when wide)
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
            gram = grams.get(name)
            if gram is None:
                width = flat.shape[1]
                dtype = torch.float64 if width <= FLOAT64_MAX_INPUTS else torch.float32
                gram = grams[name] = torch.zeros(width, width, dtype=dtype, device=x.device)
            # one chunk in float32 (fast), the running sum in float64 where affordable; a band of rows
            # at a time, so the float32 product is never a whole [in, in] matrix (8192 inputs: 0.25 GB)
            for lo in range(0, flat.shape[1], _GRAM_BAND):
                gram[lo : lo + _GRAM_BAND].add_(flat[:, lo : lo + _GRAM_BAND].T @ flat)

        return hook

    def finish() -> None:
        done = {name: grams.pop(name).float().cpu() for name in list(grams)}
        if on_block is not None:
            on_block(done)
        else:
            kept.update(done)

    chunks = [tokens[i : i + seq_len].to(device) for i in range(0, tokens.numel(), seq_len)]
    chunks = [chunk for chunk in chunks if chunk.numel() >= 2]
    blocks = _blocks(model, layers)
    stages: list[tuple[list[LinearLayer], Callable[[int], None]]]
    if blocks is None:
        def run_whole(j: int) -> None:
            model(input_ids=chunks[j][None])

        stages = [(layers, run_whole)]
    else:
        inputs = _first_block_inputs(model, blocks[0][0], chunks)
        hidden = [_hidden(*call) for call in inputs]

        def run_block(block: nn.Module) -> Callable[[int], None]:
            def run(j: int) -> None:
                args, kwargs = _with_hidden(*inputs[j], hidden[j])
                out = block(*args, **kwargs)
                hidden[j] = out[0] if isinstance(out, tuple) else out

            return run

        stages = [(block_layers, run_block(block)) for block, block_layers in blocks]
    if on_stage:
        on_stage(0, len(stages))
    for done, (stage_layers, run) in enumerate(stages, start=1):
        handles = [modules[layer.name].register_forward_hook(hook_for(layer.name)) for layer in stage_layers]
        try:
            for j in range(len(chunks)):
                seen_inputs.clear()
                run(j)
        finally:
            seen_inputs.clear()
            for handle in handles:
                handle.remove()
        finish()
        heap.trim()  # the block's activations were many allocations of a few MB
        if on_stage:
            on_stage(done, len(stages))
    n_tokens = sum(int(chunk.numel()) for chunk in chunks)
    return CalibrationStats(kept, leader, n_tokens, time.perf_counter() - start, device)
