"""Wanda (Sun et al. 2023): prune the weights with the smallest |W|·‖X_j‖ in each output row."""

from __future__ import annotations

from torch import Tensor

from compress.operators.base import ScoreSparsity
from compress.ops import wanda_score


class WandaSparsity(ScoreSparsity):
    @property
    def needs_stats(self) -> bool:
        return True

    def score(self, matrix: Tensor, col_norm: Tensor | None) -> Tensor:
        if col_norm is None:
            raise ValueError("the wanda score needs the input norms of the matrix's columns")
        return wanda_score(matrix, col_norm)


HANDLER = WandaSparsity("wanda")
