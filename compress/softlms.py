"""SoftLMs (Bhatnagar et al. 2024): per-layer ranks learned by soft thresholds on singular values.

Every linear layer is replaced by its full low-rank factorisation ``W = left · diag(g) · right``
(the low-rank operator's factors, e.g. whitened SVD, so the singular values measure the layer's
output error on the calibration inputs). The gate of singular value σ_i is a differentiable
threshold in log space, ``g_i = sigmoid((log(σ_i/σ_0) - t) / T)``, with one learnable threshold
``t`` per layer: values well above it pass, values below are clipped. The soft rank of a layer is
``Σ g_i``; its soft parameter count ``min(Σ g_i · (in + out), in · out)``.

Only the thresholds train (the weights stay the dense model's factors), on the distillation loss
(``compress.recover``'s KL to the dense model on the calibration split), starting from the uniform
allocation (each threshold between the uniform rank's singular values). The budget is held by
projection rather than by the paper's penalty term: after every step one common shift of all
thresholds (bisected, no gradient) puts the soft kept parameters back on the budget. With a penalty,
Adam (which moves every parameter by about the learning rate) let its common-mode gradient move all
thresholds together by ±lr each step and drown the per-layer signal (on tiny-llama the thresholds
ended within 0.022 of where they started after 6 steps); the projection leaves the gradient only
the differences between layers to learn.

At the end every layer's hard rank is the count of σ above its threshold shifted by one more common
offset, and ``compress.budget.project_to_budget`` bisects that offset so the ranks meet the budget
exactly (the learned thresholds decide *where* the parameters go; the projection how many).

This is a relaxation of the paper's soft-thresholding (a sigmoid gate on log σ rather than a
shrinkage of σ), chosen so that the kept singular values are not shrunk and the trained model is the
truncated SVD the operator applies. The learned thresholds are cached per (model, calibration data,
operator, budget, settings): a second call costs no forward pass.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ConfigError
from compress.budget import LOWRANK_OPERATORS, Allocation, check_operators, project_to_budget
from compress.corpora import DEFAULT_DATASET
from compress.layers import LinearLayer
from compress.ops import SVDFactors
from compress.recover import RecoverSettings, Sampler, distillation_loss
from compress.session import ModelSession

_LOG_FLOOR = -30.0  # log(σ/σ_0) of a zero singular value: far below any threshold


@dataclass(frozen=True)
class SoftLMsSettings:
    """``steps`` optimizer steps of ``tokens`` calibration tokens each (one teacher and one student
    forward pass and one backward pass per step); ``temperature`` is the gate's width in log σ."""

    steps: int = 32
    tokens: int = 256
    lr: float = 0.05
    temperature: float = 0.25
    seed: int = 0
    dataset: str = DEFAULT_DATASET

    def __post_init__(self) -> None:
        checks = [("steps", self.steps >= 1, "must be at least 1"), ("tokens", self.tokens >= 8, "must be at least 8"),
                  ("lr", self.lr > 0, "must be > 0"), ("temperature", self.temperature > 0, "must be > 0")]
        ConfigError.check(self, checks)


@dataclass
class SoftLMsRun:
    """The learned thresholds (log σ/σ_0 units, per layer) and what learning them cost."""

    thresholds: dict[str, float]
    steps: int
    tokens: int
    forward_passes: int  # teacher + student
    backward_passes: int
    seconds: float
    history: list[dict[str, float]]  # per step: the distillation loss (KL to dense)
    cached: bool = False


def log_sigma(factors: SVDFactors) -> Tensor:
    """log(σ_i / σ_0), floored (a zero σ gets ``_LOG_FLOOR``)."""
    sigma = factors.sigma.double()
    top = float(sigma[0]) if sigma.numel() and float(sigma[0]) > 0 else 1.0
    return torch.log((sigma / top).clamp_min(math.exp(_LOG_FLOOR))).float()


def uniform_threshold(levels: Tensor, rank: int) -> float:
    """A threshold between the ``rank``-th and the next log singular value (keeps exactly ``rank``)."""
    k = levels.numel()
    if rank <= 0:
        return float(levels[0]) + 1.0
    if rank >= k:
        return float(levels[-1]) - 1.0
    return float(levels[rank - 1] + levels[rank]) / 2


class SoftRankLinear(nn.Module):
    """``left · diag(g(t)) · right`` with a learnable threshold ``t``; the factors are frozen buffers."""

    left: Tensor
    right: Tensor
    levels: Tensor
    bias: Tensor | None

    def __init__(self, factors: SVDFactors, bias: Tensor | None, threshold: float, temperature: float) -> None:
        super().__init__()
        self.register_buffer("left", factors.left, persistent=False)
        self.register_buffer("right", factors.right, persistent=False)
        self.register_buffer("levels", log_sigma(factors), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.temperature = temperature

    def gates(self, shift: float = 0.0) -> Tensor:
        return torch.sigmoid((self.levels - self.threshold - shift) / self.temperature)

    def forward(self, x: Tensor) -> Tensor:
        latent = F.linear(x, self.right.to(x.dtype)) * self.gates().to(x.dtype)
        return F.linear(latent, self.left.to(x.dtype), self.bias)


def lowrank_operator(operators: Sequence[str]) -> str:
    """The low-rank operator whose ranks are learned (the first parameter operator); else ConfigError."""
    param_ops, _ = check_operators(operators)
    if param_ops[0] not in LOWRANK_OPERATORS:
        raise ConfigError("operators", f"softlms learns ranks: it needs a low-rank operator first "
                                       f"(one of {', '.join(LOWRANK_OPERATORS)}), got {param_ops[0]!r}")
    return param_ops[0]


def _soft_fraction(modules: dict[str, SoftRankLinear], layers: Sequence[LinearLayer], shift: float = 0.0) -> float:
    """Soft kept parameters / linear parameters, with every threshold moved by ``shift``."""
    total = sum(layer.params for layer in layers)
    with torch.no_grad():
        kept = sum(min(float(modules[layer.name].gates(shift).sum()) * (layer.in_features + layer.out_features),
                       float(layer.params)) for layer in layers)
    return kept / total


@torch.no_grad()
def _recentre(modules: dict[str, SoftRankLinear], layers: Sequence[LinearLayer], budget: float) -> None:
    """Shift every threshold by one common amount so the soft kept fraction is ``budget``."""
    lo, hi = -2 * abs(_LOG_FLOOR), 2 * abs(_LOG_FLOOR)  # the fraction falls as the shift grows
    for _ in range(60):
        mid = (lo + hi) / 2
        if _soft_fraction(modules, layers, mid) > budget:
            lo = mid
        else:
            hi = mid
    for module in modules.values():
        module.threshold.add_((lo + hi) / 2)


def train_thresholds(session: ModelSession, budget: float, operator: str, settings: SoftLMsSettings,
                     on_step: Callable[[int, int], None] | None = None) -> SoftLMsRun:
    """Learn one threshold per layer (the model's weights untouched); see the module docstring."""
    factors = session.svd(LOWRANK_OPERATORS[operator])
    modules: dict[str, SoftRankLinear] = {}
    for layer in session.layers:
        dense = session.modules[layer.name]
        rank = math.floor(budget * layer.params / (layer.in_features + layer.out_features))
        levels = log_sigma(factors[layer.name])
        modules[layer.name] = SoftRankLinear(factors[layer.name], dense.bias, uniform_threshold(levels, rank),
                                             settings.temperature)
    session.restore()  # the teacher is the dense model
    # The student shares nothing with the teacher but the frozen non-linear weights' values: a deep
    # copy in which every linear layer is its soft-rank stand-in (the memo substitutes them).
    memo: dict[int, object] = {id(session.modules[name]): module for name, module in modules.items()}
    student = copy.deepcopy(session.model, memo)
    student.requires_grad_(False)
    thresholds = [module.threshold for module in modules.values()]
    for parameter in thresholds:
        parameter.requires_grad_(True)
    student.eval()
    _recentre(modules, session.layers, budget)
    optimizer = torch.optim.Adam(thresholds, lr=settings.lr)
    sampler = Sampler(session, RecoverSettings(tokens=settings.tokens, seed=settings.seed, dataset=settings.dataset))
    causal = session.loaded.kind == "causal-lm"
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    if on_step:
        on_step(0, settings.steps)
    for step in range(settings.steps):
        loss = distillation_loss(student, session.model, sampler.next(), causal=causal, hidden_weight=0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _recentre(modules, session.layers, budget)
        history.append({"step": float(step + 1), "loss": float(loss.detach())})
        if on_step:
            on_step(step + 1, settings.steps)
    return SoftLMsRun(
        thresholds={name: float(module.threshold.detach()) for name, module in modules.items()},
        steps=settings.steps, tokens=settings.tokens, forward_passes=2 * settings.steps,
        backward_passes=settings.steps, seconds=time.perf_counter() - start, history=history,
    )


def project_ranks(session: ModelSession, run: SoftLMsRun, budget: float, operator: str) -> Allocation:
    """The budget-exact allocation: ranks = count(log σ > threshold - δ), one global δ bisected."""
    factors = session.svd(LOWRANK_OPERATORS[operator])
    levels = [log_sigma(factors[layer.name]).numpy() for layer in session.layers]
    limits = np.array([run.thresholds[layer.name] for layer in session.layers])
    width = np.array([(layer.in_features + layer.out_features) / layer.params for layer in session.layers])

    def family(delta: float) -> np.ndarray:
        ranks = np.array([np.count_nonzero(lv > t - delta) for lv, t in zip(levels, limits, strict=True)])
        return np.minimum((ranks + 0.5) * width, 1.0)  # the keep whose floor is exactly that rank

    ops = {layer.name: operator for layer in session.layers}
    return project_to_budget(session.layers, family, budget, ops, lo=-2 * abs(_LOG_FLOOR), hi=2 * abs(_LOG_FLOOR))


def _cache_name(budget: float, operator: str, settings: SoftLMsSettings) -> str:
    key = json.dumps({"op": operator, "budget": budget, "settings": asdict(settings)}, sort_keys=True)
    return f"softlms-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def learned_thresholds(session: ModelSession, budget: float, operators: Sequence[str], settings: SoftLMsSettings,
                       on_step: Callable[[int, int], None] | None = None) -> SoftLMsRun:
    """The thresholds for (model, calibration data, operator, budget, settings): from the cache when
    they were learned before (costing nothing), else trained and stored."""
    operator = lowrank_operator(operators)
    path = session.cache_dir / _cache_name(budget, operator, settings)
    if path.is_file():
        run = SoftLMsRun(**json.loads(path.read_text()))
        run.cached = True
        return run
    run = train_thresholds(session, budget, operator, settings, on_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(asdict(run)))
    tmp.replace(path)
    return run
