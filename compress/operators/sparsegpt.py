"""SparseGPT (Frantar & Alistarh 2023): prune, then update the kept weights to rebuild the layer's output.

Unlike Wanda, the result is not a mask over the dense weight: the kept weights change (the OBS
update, ``compress.ops.sparsegpt``), and the change depends on the sparsity. So a layer at a given
setting is computed once from the dense weight and the calibration Gram of the DENSE model's inputs
(any mix of layer settings then plugs together, as in EvoPress's level database), and kept: in
memory for the session (each layer's latest setting), and on disk beside the other per-model caches
(``<stats cache>/sparsegpt/<layer>-<setting>.safetensors``), so every later trial, process and
worker that asks for the same (layer, setting) loads it instead of recomputing (~0.3-2 s per layer
on 2 cores).

Scope: the dense weight of a layer (unstructured with slimscout's exact per-row counts, or N:M).
A low-rank factor has no Gram of its own inputs here, so SparseGPT on factors is refused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.errors import ConfigError
from compress.config import SparsitySpec
from compress.operators.base import LayerContext, SparsityHandler
from compress.operators.layer_cache import layer_result
from compress.ops import pruned_per_row, sparsegpt

# Fraction of the mean Hessian diagonal added to it. SparseGPT's own default is 0.01; on smollm2-135m
# with 4,096 calibration tokens 0.1 is better on held-out news (keep 0.5: 56.61 against 57.89; 0.4:
# 109.73 against 111.45) and on Wikipedia (0.5: 55.59 against 76.36), bench/results/reconstruction/.
DAMPENING = 0.1


def setting_key(cols: int, spec: SparsitySpec) -> str:
    """The cache key of a setting: weights pruned per row (unstructured) or the N:M pattern."""
    nm = spec.nm
    return f"nm{nm[0]}-{nm[1]}" if nm is not None else f"p{pruned_per_row(cols, spec.ratio)}"


class SparseGPTSparsity(SparsityHandler):
    levelled = True

    @property
    def needs_stats(self) -> bool:
        return True

    def warm(self, ctx: LayerContext, name: str, spec: SparsitySpec) -> None:
        self._pruned(ctx, name, spec)

    def _pruned(self, ctx: LayerContext, name: str, spec: SparsitySpec) -> Tensor:
        dense = ctx.dense_weight(name)
        nm = spec.nm

        def compute() -> dict[str, Tensor]:
            try:
                return {"weight": sparsegpt(dense, ctx.stats().gram(name), sparsity=None if nm else spec.ratio,
                                            nm=nm, percdamp=DAMPENING)}
            except ConfigError as exc:
                raise ConfigError(f"layers.{name}.sparsity.pattern", exc.reason) from None

        key = f"{setting_key(int(dense.shape[1]), spec)}-d{DAMPENING}"
        return layer_result(ctx, self.name, "sparsegpt", name, key, compute, device=dense.device)["weight"]

    def sparsify(self, ctx: LayerContext, name: str, matrix: Tensor, spec: SparsitySpec, *,
                 col_norm: Tensor | None = None, ranks: Tensor | None = None) -> Tensor:
        if spec.ratio == 0:
            return matrix
        dense = ctx.dense_weight(name)
        if matrix.shape != dense.shape:
            raise ConfigError(f"layers.{name}.sparsity.score",
                              "sparsegpt prunes a layer's dense weight, not its low-rank factors "
                              "(use wanda or magnitude on a low-rank layer)")
        if matrix is dense or torch.equal(matrix, dense):
            return self._pruned(ctx, name, spec)
        # Another matrix of the layer's shape (a rank-truncated weight stored dense): the same inputs,
        # so the same Gram; computed, not cached (it is specific to that matrix).
        nm = spec.nm
        return sparsegpt(matrix, ctx.stats().gram(name), sparsity=None if nm else spec.ratio, nm=nm,
                         percdamp=DAMPENING)


HANDLER = SparseGPTSparsity("sparsegpt")
