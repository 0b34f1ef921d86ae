"""The compressed-tensors format: what vLLM and transformers (with the ``compressed-tensors`` package) load.

A config's quantised layers are packed by the compressed-tensors library itself (``pack-quantized``:
int32-packed integer codes plus per-group scales), one *config group* per distinct (bits, group
size) targeting the layers by exact name, so that a per-layer bit allocation is expressed exactly
(several groups make ``mixed-precision`` checkpoints in the library's terms). Every group is
symmetric (``symmetric: true``, no zero points): slimscout's quantisers fix the zero point at
2^(bits-1).

slimscout computes the integers; the library packs them. Each quantiser hands over the grid its
weight was dequantised from (``QuantHandler.grid``: codes, scales, zero points): RTN's round to
nearest (``compress.ops.rtn_grid``) and GPTQ's cached codes (``compress.operators.gptq``), at
whatever bits each layer has. The scales become the modules' ``weight_scale``; the library quantises
the float weight with them, which gives back slimscout's codes exactly (checked here against what it
packed), so the loaded weight equals ``ModelSession.compressed_weight`` bit for bit (float32; tested
for RTN int4 and int4/int8, GPTQ int4 and GPTQ at mixed 3/4/8 bits).

Bit widths: compressed-tensors (0.20) packs any of 1..8 bits densely (32 codes in ``bits`` int32
words) and transformers unpacks them all, so 2, 3, 4 and 8 bits are all written packed (3 bits
tested). Which widths a serving engine has kernels for is the engine's business; only transformers
is tested here.

What the format cannot express, and what happens to it:

- **sparsity** is stored as explicit zeros in the dense weight (or as zero codes of a quantised
  layer). compressed-tensors dropped its sparse (bitmask) compressors in 0.15, and transformers 5
  only reads its quantisation config, so no loader of today reads a sparse format: the zeros are
  exact, the disk saving is not there.
- **low rank** (two factors) and **SDQ outliers** (16-bit outliers beside int4 codes) have no
  compressed-tensors layout: refused with the layer's name, unless the user asks to merge, in
  which case the layer is stored as its dense (dequantised) matrix.
- a group size that does not divide the layer's inputs (the library's group strategy needs whole
  groups): refused, or stored dequantised under merge.
- an **asymmetric grid** (a zero point per group; no registered quantiser has one, but
  ``QuantHandler.symmetric`` allows it): refused, or stored dequantised under merge. The library
  writes packed zero points (``symmetric: false``), but transformers 5.24 cannot load them: it
  prepares the modules with compressed-tensors 0.20.1's shape-only (meta) compression, which leaves
  ``weight_zero_point`` unpacked ([out, groups]), and the packed tensor from the file
  ([ceil(out·bits/32), groups]) is then refused as a size mismatch. (The library's
  ``naive-quantized`` format, one int8 per code with unpacked zero points, loaded bit for bit when
  tried once on tiny-llama, but costs 8 bits per weight.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from common.errors import ExportError
from compress.config import CompressionConfig, LayerConfig
from compress.layers import LinearLayer
from compress.operators import quant_handler
from compress.ops import QuantizedWeight
from compress.weight_files import save_weights

if TYPE_CHECKING:
    from compress.session import ModelSession

PACKED_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class LayerPlan:
    """How one compressible layer is stored in a compressed-tensors export."""

    storage: str  # "packed" (integer codes + scales) or "dense" (a float matrix, zeros included)
    bits: int | None = None
    group_size: int | None = None
    reason: str | None = None  # why a quantised layer is stored dense (merged)


def _not_expressible(layer: LinearLayer, cfg: LayerConfig) -> str | None:
    if cfg.lowrank is not None:
        return f"is low rank (rank {cfg.lowrank.rank}); compressed-tensors has no low-rank layout"
    quant = cfg.quant
    if quant is None:
        return None
    if quant.outliers is not None:
        return f"keeps {quant.outliers} outliers in 16 bits (SDQ); compressed-tensors has no such layout"
    if not quant_handler(quant.method).symmetric:
        return (f"is quantised by {quant.method} on an asymmetric grid (a zero point per group), whose packed "
                "zero points transformers cannot load today")
    if quant.bits not in PACKED_BITS:
        return f"uses {quant.bits}-bit codes; the packed format takes {', '.join(map(str, PACKED_BITS))}"
    if layer.in_features % quant.group_size:
        return (f"has {layer.in_features} inputs, not a multiple of its group size {quant.group_size}; "
                "compressed-tensors needs whole groups (choose a group size that divides every layer, e.g. 64)")
    return None


def plan_layers(layers: Sequence[LinearLayer], config: CompressionConfig, *, merge: bool) -> dict[str, LayerPlan]:
    """Each layer's storage; an ExportError naming the first layer the format cannot hold (unless ``merge``)."""
    plans: dict[str, LayerPlan] = {}
    for layer in layers:
        cfg = config.layers.get(layer.name)
        if cfg is None or (cfg.quant is None and cfg.lowrank is None):
            plans[layer.name] = LayerPlan("dense")
            continue
        problem = _not_expressible(layer, cfg)
        if problem is None:
            assert cfg.quant is not None
            plans[layer.name] = LayerPlan("packed", cfg.quant.bits, cfg.quant.group_size)
        elif merge:
            plans[layer.name] = LayerPlan("dense", reason=problem)
        else:
            raise ExportError(f"layer {layer.name} {problem}: it cannot be written in the compressed-tensors "
                              "format (pass --merge to store such layers as dense matrices)")
    return plans


def quantization_config(plans: dict[str, LayerPlan]) -> Any:
    """One compressed-tensors config group per (bits, group size), its targets the layers' exact names."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
    )

    keys = sorted({(p.bits, p.group_size) for p in plans.values() if p.storage == "packed"})
    groups = {
        f"group_{i}": QuantizationScheme(
            targets=sorted(name for name, p in plans.items() if (p.bits, p.group_size) == (bits, size)),
            weights=QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=size),
        )
        for i, (bits, size) in enumerate(keys)
    }
    return QuantizationConfig(config_groups=groups, quantization_status=QuantizationStatus.FROZEN)


def _grid(session: ModelSession, config: CompressionConfig, name: str, plan: LayerPlan) -> QuantizedWeight:
    """The grid layer ``name``'s weight was dequantised from, checked against the weight the session applied."""
    cfg = config.layers[name]
    assert cfg.quant is not None
    unquantised = session.compressed_weight(name, LayerConfig(sparsity=cfg.sparsity))
    grid = quant_handler(cfg.quant.method).grid(session, name, unquantised, cfg.quant)
    if ((grid.bits, grid.group_size) != (plan.bits, plan.group_size)
            or not grid.symmetric or bool((grid.zeros != 2 ** (grid.bits - 1)).any())
            or not torch.equal(grid.dequantize(), session.modules[name].weight)):
        raise RuntimeError(f"export of {name} disagrees with the weight the session applied")
    return grid


def _signed_codes(grid: QuantizedWeight) -> torch.Tensor:
    """``grid``'s codes in the library's signed int8 range [-2^(bits-1), 2^(bits-1)): minus the zero point."""
    return (grid.codes.to(torch.int16) - 2 ** (grid.bits - 1)).to(torch.int8)


def write_compressed_tensors(session: ModelSession, config: CompressionConfig, model: nn.Module,
                             directory: Path, plans: dict[str, LayerPlan], *, dtype: torch.dtype | None,
                             max_shard_size: int | str) -> None:
    """Write ``model`` (holding ``config``, low rank merged) to ``directory`` in the compressed-tensors format.

    Works on a copy: the library adds parameters and hooks to the modules it packs. The copy is
    packed in float32 (so the codes are exactly slimscout's), then cast to ``dtype``.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.format import infer_model_format
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import apply_quantization_config

    packed = {name: plan for name, plan in plans.items() if plan.storage == "packed"}
    if not packed:  # nothing to pack: a plain checkpoint, which every loader reads
        save_weights(model, directory, dtype=dtype, max_shard_size=max_shard_size)
        return
    qconfig = quantization_config(plans)
    grids = {name: _grid(session, config, name, plan) for name, plan in packed.items()}
    work = copy.deepcopy(model)
    apply_quantization_config(work, qconfig, show_progress=False)
    modules = dict(work.named_modules())
    with torch.no_grad():
        for name, grid in grids.items():
            modules[name].weight_scale.copy_(grid.scales)
    qconfig.format = infer_model_format(work).value
    compressor = ModelCompressor(quantization_config=qconfig)
    compressor.compress_model(work)
    for name, grid in grids.items():  # the library quantised the float weight again: its codes must be ours
        stored = unpack_from_int32(modules[name].weight_packed, grid.bits, grid.codes.shape)
        if not torch.equal(stored, _signed_codes(grid)):
            raise RuntimeError(f"compressed-tensors packed other codes than slimscout's for {name}")
    save_weights(work, directory, dtype=dtype, max_shard_size=max_shard_size)
    compressor.update_config(str(directory))
