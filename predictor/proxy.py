"""Per-layer error proxies: a layer's relative output error under its setting, from caches alone.

``LayerProxy.error(name, cfg)`` estimates ``||(W - W') Xᵀ||² / ||W Xᵀ||²`` on the calibration inputs
X (W' = what ``ModelSession.compressed_weight`` computes) without a forward pass, from the session's
Gram matrices G = XᵀX and SVD factors. Everything a lookup needs is precomputed once per layer (and
operator setting) as a curve, so any rank or sparsity ratio is an index into an array:

low rank
    Both SVD caches store ``left = U·diag(σ)`` (orthonormal U) and ``right``, so the output energy
    splits exactly into components ``c_i = ||left_i||² · (right G rightᵀ)_ii`` and the rank-r error
    is ``sum(c[r:]) / sum(c)``, for ``svd`` and ``svd-whitened`` alike, with the Gram matrix actually
    seen (``tail_energy`` of the whitened σ is the same quantity for the damped Gram matrix).
sparsity (dense weight)
    Wanda-weighted pruned mass: the share of ``sum W²·n²`` (n = input norms, the diagonal of G)
    removed by the keep mask (chosen by the config's score: ``wanda`` or ``magnitude``). For
    unstructured sparsity it is a cumulative curve over "weights pruned per row", built from the
    session's cached per-row ranks; N:M masks are computed once per pattern.
sparsity of low-rank factors
    ``right`` rows are pruned on ``|right|·n`` and ``left`` rows on ``|left|·sqrt(diag(right G
    rightᵀ))``, as the session does; the error is the pruned share of each factor's energy in the
    same metric (right rows weighted by σ²), summed over the two factors. Right rows do not depend
    on the rank, so that curve is exact in rank (ratios on a grid of 64, interpolated); left rows
    do, so it is tabulated on a grid of ranks from a fixed sample of rows and interpolated.
quantization
    ``sum (W - Q(W))²·n² / sum W²·n²`` (Q: the quant method's handler) for the dense weight; for
    factors the same per factor, in the factor metrics above (cumulative over the rank; the last
    quantization group of ``left`` is taken from the full-rank factor).

Scores and quantizers are the operators' own handlers (``compress.operators``), never copies. A
sparsity method without a score (a reconstruction operator) gets the exact relative output error
``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` of the weight the session computes (``operators.base.output_error``).

Composition: within a layer each stage acts on what the previous one left, so its relative error is
taken as relative to the energy that remains and errors compose as ``1 - (1-e_lr)(1-e_sp)(1-e_q)``
(≈ their sum when small). A low-rank setting stored as one dense matrix (rank too high to save
parameters) uses the dense-weight sparsity and quantization curves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from common.errors import ConfigError
from compress.config import LayerConfig, QuantSpec, SparsitySpec
from compress.layers import LinearLayer
from compress.operators import quant_handler, score_handler, sparsity_handler
from compress.operators.base import output_error
from compress.ops import lowrank_params, nm_mask, pruned_per_row, row_ranks
from compress.session import ModelSession

RATIO_GRID = 64
RANK_GRID = 17
LEFT_ROWS = 256
MEMO_SIZE = 1 << 18
_DENSE = LayerConfig()


class LayerErrors(Protocol):
    """What ``FeatureBuilder`` needs from a proxy: a relative error per (layer, setting)."""

    def error(self, name: str, cfg: LayerConfig | None) -> float: ...


@dataclass(frozen=True)
class _Spectrum:
    """Per (layer, SVD method): component energies and the factor-energy curves, as numpy arrays."""

    tail: np.ndarray  # [k+1] relative output error at rank r
    sigma2: np.ndarray  # [k] ||left_i||²
    latent2: np.ndarray  # [k] (right G rightᵀ)_ii
    right_energy: np.ndarray  # [k+1] cumulative σ²-weighted sum right_ij²·n_j² over rows < r
    left_energy: np.ndarray  # [k+1] cumulative sum left_ji²·latent_i² over columns < r


def _safe_ratio(num: float, den: float) -> float:
    return min(max(num / den, 0.0), 1.0) if den > 0 else 0.0


def _score(matrix: torch.Tensor, col_norm2: torch.Tensor, kind: str) -> torch.Tensor:
    """The pruning score the session uses (the handler of score method ``kind``), float32."""
    handler = score_handler(kind)
    return handler.score(matrix, col_norm2.clamp_min(0).sqrt() if handler.needs_stats else None).float()


def _cumulative(values: torch.Tensor) -> np.ndarray:
    """[len+1]: 0, then the running sum."""
    return np.concatenate([[0.0], np.cumsum(values.double().cpu().numpy())])


class LayerProxy:
    """Relative output error of one layer under one setting; memoized, built lazily per layer."""

    def __init__(self, session: ModelSession, *, ratio_grid: int = RATIO_GRID, rank_grid: int = RANK_GRID,
                 left_rows: int = LEFT_ROWS, memo_size: int = MEMO_SIZE) -> None:
        if ratio_grid < 1 or rank_grid < 2 or left_rows < 1 or memo_size < 1:
            raise ValueError("ratio_grid, left_rows and memo_size must be >= 1 and rank_grid >= 2")
        self.session = session
        self.layers: list[LinearLayer] = session.layers
        self.ratio_grid, self.rank_grid = ratio_grid, rank_grid
        self.left_rows, self.memo_size = left_rows, memo_size
        self._memo: dict[tuple[str, LayerConfig], float] = {}
        self._norm2: dict[str, torch.Tensor] = {}
        self._dense_curve: dict[tuple[str, str], np.ndarray] = {}
        self._dense_fixed: dict[tuple[str, object], float] = {}
        self._spectrum: dict[tuple[str, str], _Spectrum] = {}
        self._right_table: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._left_table: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._factor_curve: dict[tuple[str, str, str, object], np.ndarray] = {}

    # -- public --------------------------------------------------------------------------------
    def error(self, name: str, cfg: LayerConfig | None) -> float:
        """Relative output error in [0, 1] of layer ``name`` under ``cfg`` (0 for ``None`` or dense)."""
        if cfg is None or cfg.is_dense:
            if name not in self.session.by_name:
                raise ValueError(f"{name!r} is not a compressible linear layer of this model")
            return 0.0
        key = (name, cfg)
        value = self._memo.get(key)
        if value is None:
            if name not in self.session.by_name:
                raise ValueError(f"{name!r} is not a compressible linear layer of this model")
            value = self._compute(self.session.by_name[name], cfg)
            if len(self._memo) >= self.memo_size:
                self._memo.clear()
            self._memo[key] = value
        return value

    def errors(self, config_layers: Mapping[str, LayerConfig]) -> dict[str, float]:
        """Every layer's error under a config's ``layers`` (absent layers are dense: 0)."""
        return {layer.name: self.error(layer.name, config_layers.get(layer.name)) for layer in self.layers}

    # -- composition ---------------------------------------------------------------------------
    def _quantize(self, name: str, matrix: torch.Tensor, quant: QuantSpec) -> torch.Tensor:
        return quant_handler(quant.method).quantize(self.session, name, matrix, quant)

    def _compute(self, layer: LinearLayer, cfg: LayerConfig) -> float:
        if cfg.sparsity is not None and not sparsity_handler(cfg.sparsity.score).ranked:
            # No score to tabulate curves from (a reconstruction method): the exact error, one matmul.
            compressed = self.session.compressed_weight(layer.name, cfg)
            return output_error(self._dense(layer.name), compressed, self.session.stats().gram(layer.name))
        e_lr = e_sp = e_q = 0.0
        factored = False
        method, rank = "", 0
        if cfg.lowrank is not None:
            method = cfg.lowrank.method
            spectrum = self._spectrum_of(layer.name, method)
            rank = min(cfg.lowrank.rank, spectrum.sigma2.shape[0])
            e_lr = float(spectrum.tail[rank])
            factored = lowrank_params(layer.in_features, layer.out_features, rank) < layer.params
        if cfg.sparsity is not None:
            if factored:
                e_sp = self._factor_sparsity(layer, method, rank, cfg.sparsity)
            else:
                e_sp = self._dense_sparsity(layer, cfg.sparsity)
        if cfg.quant is not None:
            e_q = self._factor_quant(layer.name, method, rank, cfg.quant) if factored \
                else self._dense_quant(layer.name, cfg.quant)
        return 1.0 - (1.0 - e_lr) * (1.0 - min(e_sp, 1.0)) * (1.0 - min(e_q, 1.0))

    # -- dense weight --------------------------------------------------------------------------
    def _input_norm2(self, name: str) -> torch.Tensor:
        """n² = diag(G) [in], float64."""
        if name not in self._norm2:
            self._norm2[name] = self.session.stats().gram(name).diagonal().double().clamp_min(0)
        return self._norm2[name]

    def _dense(self, name: str) -> torch.Tensor:
        return self.session.compressed_weight(name, _DENSE).detach().double()

    def _dense_sparsity(self, layer: LinearLayer, spec: SparsitySpec) -> float:
        if spec.nm is None:
            curve = self._dense_curve.get((layer.name, spec.score))
            if curve is None:
                curve = self._build_dense_curve(layer.name, spec.score)
                self._dense_curve[(layer.name, spec.score)] = curve
            return float(curve[pruned_per_row(layer.in_features, spec.ratio)])
        key = (layer.name, ("nm", spec.score, spec.pattern))
        if key not in self._dense_fixed:
            weight, norm2 = self._dense(layer.name), self._input_norm2(layer.name)
            try:
                keep = nm_mask(_score(weight, norm2, spec.score), *spec.nm)
            except ConfigError as exc:
                raise ConfigError(f"layers.{layer.name}.sparsity.pattern", exc.reason) from None
            energy = weight.square() * norm2[None, :]
            self._dense_fixed[key] = _safe_ratio(float(energy[~keep].sum()), float(energy.sum()))
        return self._dense_fixed[key]

    def _build_dense_curve(self, name: str, kind: str) -> np.ndarray:
        """[in+1]: pruned share of the Wanda energy when the p lowest-scored weights of every row go."""
        energy = self._dense(name).square() * self._input_norm2(name)[None, :]
        ranks = self.session.ranks(kind)[name].long()
        by_position = torch.zeros(energy.shape[1], dtype=torch.float64, device=energy.device).index_add_(
            0, ranks.reshape(-1), energy.reshape(-1))
        total = float(energy.sum())
        curve = _cumulative(by_position)
        return np.clip(curve / total, 0.0, 1.0) if total > 0 else np.zeros_like(curve)

    def _dense_quant(self, name: str, quant: QuantSpec) -> float:
        key = (name, quant)
        if key not in self._dense_fixed:
            weight, norm2 = self._dense(name), self._input_norm2(name)
            try:
                deq = self._quantize(name, weight.float(), quant).double()
            except ConfigError as exc:
                raise ConfigError(f"layers.{name}.quant.{exc.field}", exc.reason) from None
            num = float(((weight - deq).square() * norm2[None, :]).sum())
            self._dense_fixed[key] = _safe_ratio(num, float((weight.square() * norm2[None, :]).sum()))
        return self._dense_fixed[key]

    # -- low rank ------------------------------------------------------------------------------
    def _factors(self, name: str, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        factors = self.session.svd(method)[name]
        return factors.left.double(), factors.right.double()

    def _spectrum_of(self, name: str, method: str) -> _Spectrum:
        key = (name, method)
        if key not in self._spectrum:
            left, right = self._factors(name, method)
            gram = self.session.stats().gram(name).double()
            sigma2 = left.square().sum(0)
            latent2 = ((right @ gram) * right).sum(1).clamp_min(0)
            component = (sigma2 * latent2).cpu().numpy()
            total = float(component.sum())
            tail = np.concatenate([np.cumsum(component[::-1])[::-1], [0.0]])
            tail = np.clip(tail / total, 0.0, 1.0) if total > 0 else np.zeros_like(tail)
            row_energy = (right.square() * self._input_norm2(name)[None, :]).sum(1)
            self._spectrum[key] = _Spectrum(tail, sigma2.cpu().numpy(), latent2.cpu().numpy(),
                                            _cumulative(sigma2 * row_energy), _cumulative(sigma2 * latent2))
        return self._spectrum[key]

    def _factor_sparsity(self, layer: LinearLayer, method: str, rank: int, spec: SparsitySpec) -> float:
        spectrum = self._spectrum_of(layer.name, method)
        nm = spec.nm
        if nm is None:
            rel_right = self._right_unstructured(layer, method, spec.score, rank, spec.ratio)
            rel_left = self._left_unstructured(layer, method, spec.score, rank, spec.ratio)
        else:
            if rank % nm[1]:
                raise ConfigError(f"layers.{layer.name}.sparsity.pattern",
                                  f"{spec.pattern} needs rows whose length is a multiple of {nm[1]}; "
                                  f"layer {layer.name} stores a {layer.out_features}x{rank} low-rank factor")
            right_curve, left_curve = self._factor_nm(layer.name, method, spec)
            rel_right = _safe_ratio(float(right_curve[rank]), float(spectrum.right_energy[rank]))
            rel_left = _safe_ratio(float(left_curve[rank]), float(spectrum.left_energy[rank]))
        return rel_right + rel_left

    def _right_unstructured(self, layer: LinearLayer, method: str, kind: str, rank: int,
                            ratio: float) -> float:
        key = (layer.name, method, kind)
        spectrum = self._spectrum_of(layer.name, method)
        if key not in self._right_table:
            _, right = self._factors(layer.name, method)
            norm2 = self._input_norm2(layer.name)
            energy = right.square() * norm2[None, :]
            ranks = row_ranks(_score(right, norm2, kind)).long()
            by_rank = torch.zeros_like(energy).scatter_(1, ranks, energy)
            cumulative = torch.nn.functional.pad(by_rank.cumsum(1), (1, 0))
            grid = np.linspace(0, layer.in_features, self.ratio_grid + 1)
            positions = np.unique(np.round(grid).astype(np.int64))
            columns = torch.from_numpy(positions).to(cumulative.device)
            sampled = cumulative[:, columns].cpu().numpy() * spectrum.sigma2[:, None]
            table = np.concatenate([np.zeros((1, positions.shape[0])), np.cumsum(sampled, axis=0)])
            self._right_table[key] = (positions.astype(np.float64), table)
        positions, table = self._right_table[key]
        pruned = float(np.interp(pruned_per_row(layer.in_features, ratio), positions, table[rank]))
        return _safe_ratio(pruned, float(spectrum.right_energy[rank]))

    def _left_unstructured(self, layer: LinearLayer, method: str, kind: str, rank: int,
                           ratio: float) -> float:
        key = (layer.name, method, kind)
        if key not in self._left_table:
            self._left_table[key] = self._build_left_table(layer, method, kind)
        grid, table = self._left_table[key]
        position = pruned_per_row(rank, ratio) / rank * self.ratio_grid  # on the uniform fraction grid
        low = min(int(position), self.ratio_grid - 1)
        weight = position - low
        at_grid = table[:, low] * (1.0 - weight) + table[:, low + 1] * weight
        return float(np.interp(rank, grid, at_grid))

    def _build_left_table(self, layer: LinearLayer, method: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Ranks grid [G] and [G, ratio_grid+1]: pruned share of left[:, :r] at fraction q/ratio_grid."""
        left, _ = self._factors(layer.name, method)
        latent2 = torch.from_numpy(self._spectrum_of(layer.name, method).latent2)
        full = left.shape[1]
        if left.shape[0] > self.left_rows:
            rows = np.unique(np.round(np.linspace(0, left.shape[0] - 1, self.left_rows)).astype(np.int64))
            left = left[torch.from_numpy(rows)]
        grid = np.unique(np.round(np.geomspace(1, full, self.rank_grid)).astype(np.int64))
        fractions = np.linspace(0.0, 1.0, self.ratio_grid + 1)
        table = np.zeros((grid.shape[0], fractions.shape[0]))
        for g, r in enumerate(grid):
            part, lat = left[:, :r], latent2[:r]
            energy = part.square() * lat[None, :]
            ranks = row_ranks(_score(part, lat, kind)).long()
            by_rank = torch.zeros(r, dtype=torch.float64, device=energy.device).index_add_(
                0, ranks.reshape(-1), energy.reshape(-1))
            curve = _cumulative(by_rank)
            total = float(energy.sum())
            if total > 0:
                table[g] = np.interp(fractions * r, np.arange(r + 1), curve / total)
        return grid.astype(np.float64), table

    def _factor_nm(self, name: str, method: str, spec: SparsitySpec) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative pruned energy over rank for an N:M pattern: right (σ²-weighted rows), left (columns)."""
        key = (name, method, "nm", (spec.score, spec.pattern))
        if key not in self._factor_curve:
            n, m = spec.nm or (1, 1)
            left, right = self._factors(name, method)
            norm2 = self._input_norm2(name)
            sigma2 = torch.from_numpy(self._spectrum_of(name, method).sigma2)
            try:
                keep = nm_mask(_score(right, norm2, spec.score), n, m)
            except ConfigError as exc:
                raise ConfigError(f"layers.{name}.sparsity.pattern", exc.reason) from None
            right_pruned = ((right.square() * norm2[None, :]) * ~keep).sum(1) * sigma2
            latent2 = torch.from_numpy(self._spectrum_of(name, method).latent2)
            pad = -left.shape[1] % m
            left_p = torch.nn.functional.pad(left, (0, pad))
            latent_p = torch.nn.functional.pad(latent2, (0, pad))
            keep_left = nm_mask(_score(left_p, latent_p, spec.score), n, m)
            left_pruned = ((left_p.square() * latent_p[None, :]) * ~keep_left).sum(0)[: left.shape[1]]
            self._factor_curve[key] = np.stack([_cumulative(right_pruned), _cumulative(left_pruned)])
        curves = self._factor_curve[key]
        return curves[0], curves[1]

    def _factor_quant(self, name: str, method: str, rank: int, quant: QuantSpec) -> float:
        key = (name, method, "quant", quant)
        spectrum = self._spectrum_of(name, method)
        if key not in self._factor_curve:
            left, right = self._factors(name, method)
            norm2 = self._input_norm2(name)
            try:
                right_q = self._quantize(name, right.float(), quant).double()
                pad = -left.shape[1] % quant.outlier_nm[1] if quant.outlier_nm else 0
                left_q = self._quantize(name, torch.nn.functional.pad(left, (0, pad)).float(), quant).double()
            except ConfigError as exc:
                raise ConfigError(f"layers.{name}.quant.{exc.field}", exc.reason) from None
            sigma2, latent2 = torch.from_numpy(spectrum.sigma2), torch.from_numpy(spectrum.latent2)
            right_err = ((right - right_q).square() * norm2[None, :]).sum(1) * sigma2
            left_err = (left - left_q[:, : left.shape[1]]).square().sum(0) * latent2
            self._factor_curve[key] = np.stack([_cumulative(right_err), _cumulative(left_err)])
        curves = self._factor_curve[key]
        return (_safe_ratio(float(curves[0][rank]), float(spectrum.right_energy[rank]))
                + _safe_ratio(float(curves[1][rank]), float(spectrum.left_energy[rank])))
