"""A random layer with correlated inputs: the setting in which reconstruction should beat scores."""

from __future__ import annotations

import torch


def correlated_problem(rows: int = 48, cols: int = 128, tokens: int = 512, seed: int = 0,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight [rows, cols], inputs X [tokens, cols], Gram XᵀX) with correlated, unevenly scaled inputs."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 2 * torch.randn(cols, cols, generator=gen) / cols**0.5
    x = torch.randn(tokens, cols, generator=gen) @ mix * (0.2 + 2 * torch.rand(cols, generator=gen))
    weight = torch.randn(rows, cols, generator=gen)
    return weight, x, x.T @ x


def output_error(weight: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    return float(((weight - approx) @ x.T).norm())
