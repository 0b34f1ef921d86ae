"""The compressed-tensors format: what vLLM and transformers (with the ``compressed-tensors`` package) load.

A config's quantised layers are packed by the compressed-tensors library itself (``pack-quantized``:
int32-packed integer codes plus per-group scales), one *config group* per distinct (bits, group size)
so that a per-layer bit allocation is expressed exactly (several groups make ``mixed-precision``
checkpoints in the library's terms). slimscout's quantiser is symmetric round-to-nearest with
scale = max|w| / (2^(bits-1) - 1) per group (``compress.ops.quantize_groups``); the scales are
computed here and handed to the library, whose packing then reproduces the same integer codes, so
the loaded weight equals ``ModelSession.compressed_weight`` bit for bit (float32; tested).

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
from compress.ops import dequantize_groups, quantize_groups
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
    if quant.method != "rtn":  # the scales below are RTN's; GPTQ's own codes and scales are not handed over yet
        return f"is quantised by {quant.method}, whose codes this export does not write yet"
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


def write_compressed_tensors(session: ModelSession, config: CompressionConfig, model: nn.Module,
                             directory: Path, plans: dict[str, LayerPlan], *, dtype: torch.dtype | None,
                             max_shard_size: int | str) -> None:
    """Write ``model`` (holding ``config``, low rank merged) to ``directory`` in the compressed-tensors format.

    Works on a copy: the library adds parameters and hooks to the modules it packs. The copy is
    packed in float32 (so the codes are exactly slimscout's), then cast to ``dtype``.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.format import infer_model_format
    from compressed_tensors.quantization import apply_quantization_config

    packed = {name: plan for name, plan in plans.items() if plan.storage == "packed"}
    if not packed:  # nothing to pack: a plain checkpoint, which every loader reads
        save_weights(model, directory, dtype=dtype, max_shard_size=max_shard_size)
        return
    qconfig = quantization_config(plans)
    scales = {}
    for name, plan in packed.items():
        assert plan.bits is not None and plan.group_size is not None
        cfg = config.layers[name]
        unquantised = session.compressed_weight(name, LayerConfig(sparsity=cfg.sparsity))
        codes, scale = quantize_groups(unquantised, plan.bits, plan.group_size)
        if not torch.equal(dequantize_groups(codes, scale, plan.group_size), session.modules[name].weight):
            raise RuntimeError(f"export of {name} disagrees with the weight the session applied")
        scales[name] = scale
    work = copy.deepcopy(model)
    apply_quantization_config(work, qconfig, show_progress=False)
    modules = dict(work.named_modules())
    with torch.no_grad():
        for name, scale in scales.items():
            modules[name].weight_scale.copy_(scale)
    qconfig.format = infer_model_format(work).value
    compressor = ModelCompressor(quantization_config=qconfig)
    compressor.compress_model(work)
    save_weights(work, directory, dtype=dtype, max_shard_size=max_shard_size)
    compressor.update_config(str(directory))
