"""Pure tensor operators: (weight, statistics, settings) → new tensors. No modules, no state."""

from .lowrank import SVDFactors, lowrank_params, lowrank_weight, svd_factors, tail_energy
from .quant import dequantize_groups, fake_quant, quant_error, quantize_groups, sdq
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
    "SVDFactors",
    "dequantize_groups",
    "fake_quant",
    "lowrank_params",
    "lowrank_weight",
    "magnitude_score",
    "nm_mask",
    "pruned_mass",
    "pruned_per_row",
    "quant_error",
    "quantize_groups",
    "row_ranks",
    "sdq",
    "svd_factors",
    "tail_energy",
    "unstructured_mask",
    "wanda_score",
]
