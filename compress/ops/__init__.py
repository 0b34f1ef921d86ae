"""Pure tensor operators: (weight, statistics, settings) → new tensors. No modules, no state."""

from .gptq import GPTQResult, QuantizedWeight, default_group_size, gptq, pack_codes, unpack_codes
from .lowrank import SVDFactors, lowrank_params, lowrank_weight, svd_factors, tail_energy
from .quant import dequantize_groups, fake_quant, quant_error, quantize_groups, rtn_grid, sdq
from .sparsegpt import SparseGPTResult, sparsegpt, sparsegpt_result
from .sparsity import (
    magnitude_score,
    nm_mask,
    pruned_mass,
    pruned_per_row,
    row_ranks,
    unstructured_mask,
    wanda_score,
)

__all__ = [
    "GPTQResult",
    "QuantizedWeight",
    "SVDFactors",
    "SparseGPTResult",
    "default_group_size",
    "dequantize_groups",
    "fake_quant",
    "gptq",
    "lowrank_params",
    "lowrank_weight",
    "magnitude_score",
    "nm_mask",
    "pack_codes",
    "pruned_mass",
    "pruned_per_row",
    "quant_error",
    "quantize_groups",
    "row_ranks",
    "rtn_grid",
    "sdq",
    "sparsegpt",
    "sparsegpt_result",
    "svd_factors",
    "tail_energy",
    "unpack_codes",
    "unstructured_mask",
    "wanda_score",
]
