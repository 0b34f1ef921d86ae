"""SparseGPT: prune a linear weight with the OBS update of the kept weights, optionally quantising them.

Masks count zeros per row exactly as the accounting does (``pruned_per_row``); see ``obs_sweep``
for how the adaptive block-wise selection is kept to each row's count.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from common.errors import ConfigError

from .gptq import GroupGrid, QuantizedWeight
from .obs import InverseHessian, check_hessian_shape, inverse_hessian_factor, obs_sweep
from .sparsity import pruned_per_row


@dataclass(frozen=True)
class SparseGPTResult:
    weight: Tensor  # float32 [out, in]; zero wherever ``keep`` is False
    keep: Tensor  # bool [out, in]
    quantized: QuantizedWeight | None  # the joint variant's stored grid (pruned weights sit on code == zero point)


def sparsegpt_result(
    weight: Tensor,
    hessian: Tensor | InverseHessian,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    quant: tuple[int, int] | None = None,
    symmetric: bool = True,
) -> SparseGPTResult:
    """SparseGPT at ``sparsity`` (unstructured) or ``nm`` = (N kept, M); ``quant`` = (bits, group_size).

    ``hessian``: the calibration Gram, or its ``inverse_hessian_factor`` already computed (then
    ``percdamp`` is the one it was computed with, and several settings of a layer share it).
    """
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity (unstructured) or nm (N:M)")
    check_hessian_shape(weight, hessian)
    if isinstance(hessian, InverseHessian) and hessian.perm is not None:
        raise ValueError("SparseGPT sweeps the inputs in their own order; this inverse Hessian is permuted")
    rows, cols = weight.shape
    if nm is not None:
        n, m = nm
        if not 0 < n <= m:
            raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
        if cols % m:
            raise ConfigError("pattern", f"{n}:{m} needs in_features divisible by {m}; in_features={cols}")
    grid = None
    if quant is not None:
        grid = GroupGrid(rows, cols, quant[0], quant[1], symmetric=symmetric, device=weight.device)
        blocksize = -(-blocksize // quant[1]) * quant[1]
    inverse = hessian if isinstance(hessian, InverseHessian) else inverse_hessian_factor(hessian, percdamp=percdamp)
    prune = pruned_per_row(cols, sparsity) if sparsity is not None else None
    out, keep = obs_sweep(weight, inverse, blocksize=blocksize, prune_per_row=prune, nm=nm, grid=grid)
    return SparseGPTResult(out, keep, grid.result() if grid is not None else None)


def sparsegpt(
    weight: Tensor,
    hessian: Tensor | InverseHessian,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    quant: tuple[int, int] | None = None,
) -> Tensor:
    """The pruned (and, with ``quant``, quantised) weight; ``sparsegpt_result`` also gives mask and codes."""
    return sparsegpt_result(
        weight, hessian, sparsity=sparsity, nm=nm, blocksize=blocksize, percdamp=percdamp, quant=quant
    ).weight
