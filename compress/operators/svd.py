"""Truncated SVD of a weight, plain or whitened (SVD-LLM): one module, the two differ by one argument.

Whitened factors come from ``W·S`` with ``S`` the Cholesky factor of the calibration Gram matrix, so
the truncation minimises the layer's output error on the calibration inputs (``compress.ops.lowrank``).
"""

from __future__ import annotations

from torch import Tensor

from compress.operators.base import LowRankHandler
from compress.ops import SVDFactors, svd_factors


class SVDLowRank(LowRankHandler):
    def __init__(self, name: str, *, whitened: bool) -> None:
        super().__init__(name)
        self.whitened = whitened

    @property
    def needs_stats(self) -> bool:
        return self.whitened

    def factors(self, weight: Tensor, gram: Tensor | None) -> SVDFactors:
        if self.whitened and gram is None:
            raise ValueError("whitened SVD needs the layer's calibration Gram matrix")
        return svd_factors(weight, gram if self.whitened else None)


PLAIN = SVDLowRank("svd", whitened=False)
WHITENED = SVDLowRank("svd-whitened", whitened=True)
