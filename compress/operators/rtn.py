"""Round-to-nearest quantization with symmetric per-group scales; with ``outliers`` N:M, SDQ.

``int8``, ``int4`` and ``sdq`` are this one method at preset settings (``compress.registry``):
SDQ keeps an N:M-structured set of the largest |w| in 16 bits and quantizes the rest.
"""

from __future__ import annotations

from torch import Tensor

from compress.config import QuantSpec
from compress.operators.base import LayerContext, QuantHandler
from compress.ops import QuantizedWeight, fake_quant, rtn_grid, sdq


class RoundToNearest(QuantHandler):
    def quantize(self, ctx: LayerContext | None, name: str, matrix: Tensor, spec: QuantSpec) -> Tensor:
        nm = spec.outlier_nm
        if nm is None:
            return fake_quant(matrix, spec.bits, spec.group_size)
        return sdq(matrix, spec.bits, spec.group_size, *nm)

    def grid(self, ctx: LayerContext, name: str, matrix: Tensor, spec: QuantSpec) -> QuantizedWeight:
        if spec.outliers is not None:
            raise ValueError(f"layer {name} keeps SDQ outliers beside its grid")
        return rtn_grid(matrix, spec.bits, spec.group_size)


HANDLER = RoundToNearest("rtn")
