"""Magnitude pruning: prune the weights with the smallest |W| in each output row (no calibration)."""

from __future__ import annotations

from torch import Tensor

from compress.operators.base import ScoreSparsity
from compress.ops import magnitude_score


class MagnitudeSparsity(ScoreSparsity):
    def score(self, matrix: Tensor, col_norm: Tensor | None) -> Tensor:
        return magnitude_score(matrix)


HANDLER = MagnitudeSparsity("magnitude")
