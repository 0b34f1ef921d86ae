"""Pure tensor operators: (weight, statistics, settings) → new tensors. No modules, no state."""

from .gptq import GPTQResult, QuantizedWeight, default_group_size, gptq, pack_codes, unpack_codes
from .lowrank import SVDFactors, lowrank_params, lowrank_weight, svd_factors, tail_energy
from .quant import fake_quant, quant_error, sdq
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
    "SparseGPTResult",
    "default_group_size",
    "gptq",
    "pack_codes",
    "sparsegpt",
    "sparsegpt_result",
    "unpack_codes",
    "SVDFactors",
    "fake_quant",
    "lowrank_params",
    "lowrank_weight",
    "magnitude_score",
    "nm_mask",
    "pruned_mass",
    "pruned_per_row",
    "quant_error",
    "row_ranks",
    "sdq",
    "svd_factors",
    "tail_energy",
    "unstructured_mask",
    "wanda_score",
]
