"""Recovery: distil the dense model into its compressed self, keeping the config's structure exactly.

Prune Once for All (Zafrir et al.) style: the compressed model (the *student*) is trained to match
the dense model (the *teacher*, the session's own model, left untouched) on the ``calibration``
split, and early-stopped on the ``search`` split:

- causal LMs: KL(teacher || student) of the next-token distributions, per token;
- encoders: 1 - cosine between the student's and the teacher's last hidden states, per token
  (the sentence embedding is their mean, so this distils the embeddings);
- optionally (``hidden_weight`` > 0) plus the relative MSE of every block's hidden state.

The structure never changes (``compress.recover_modules``): masks fixed, low-rank layers trained
as their two factors, quantized layers fake-quantized with a straight-through estimator on the
config's grid. Embedding matrices (and a tied LM head) are frozen; everything else trains.

Every ``eval_every`` steps the student is measured on the search split (KL to dense, or cosine),
the best state so far is kept, and a checkpoint is written atomically (tmp + rename): trainable
weights, AdamW state, step, the data sampler's RNG, the best state and the history. A killed run
resumes from it (``resume=True``) and ends exactly as an uninterrupted run with the same seed
would: the only randomness is the sampler's generator, which the checkpoint restores, and the
student runs in eval mode (no dropout). The result is written in ``compress.export``'s format.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ConfigError, CorruptCheckpointError, DatasetError
from compress.config import CompressionConfig, LayerConfig
from compress.corpora import DEFAULT_DATASET
from compress.data import token_stream
from compress.export import (
    CONFIG_NAME,
    MANIFEST_NAME,
    build_manifest,
    check_target,
    is_factored,
    staged_directory,
)
from compress.layers import count_params
from compress.lr_schedule import LR_SCHEDULES, learning_rate
from compress.measure import ENCODER_SEQ_LEN, Evaluator, Metrics
from compress.operators import ScoreSparsity, sparsity_handler
from compress.ops import unstructured_mask
from compress.recover_modules import ConstrainedLayer, FactoredLinear, MaskedLinear
from compress.session import ModelSession
from compress.weight_files import files_bytes, save_weights

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "slimscout.recover-checkpoint/v1"


@dataclass(frozen=True)
class RecoverSettings:
    """How to recover. ``tokens`` is per optimizer step (one causal sequence of that length, or
    ``tokens // 128`` encoder windows); ``patience`` evaluations without a better search score stop
    the run early (0: never), and so does a training time over ``max_minutes``. With a time budget the
    schedule spans the steps that fit it (``fitted_horizon``: re-estimated at every evaluation from the
    seconds per step so far, never past ``steps``), so a cosine decays to its end as the time runs out
    instead of being cut off near its peak. ``schedule`` names an
    entry of ``LR_SCHEDULES``, applied after ``warmup`` linear-warmup steps. Low-rank factors train
    at ``lr × factor_lr_scale``: on smollm2-135m the whitened-SVD keep-0.8 winner went from search
    perplexity 114.2 to 63.4 in 30 steps at 1e-4, and only to 108.2 at 5e-4, where the
    Wanda keep-0.4 winner trains well at 5e-4 (120.8 to 66.5). ``bf16`` runs the
    training forward and backward passes under bfloat16 autocast (the weights, the optimizer and
    every evaluation stay float32): the same search-split KL after 60 steps, and 2x faster per step
    on one AVX-512-BF16 machine but 1.5x slower on another that reports the same flag (its bf16
    matmul runs at half the float32 rate), so it is a choice to time, not a default.
    ``train_extra`` names more corpora whose calibration splits join ``dataset``'s as training text;
    each step draws its corpus uniformly, then a window in it. Lee news' calibration split is 14k
    tokens, seen nearly 9 times by 240 steps of 512; early stopping and every report stay on
    ``dataset``'s search split, and no corpus's search or holdout split is ever trained on."""

    steps: int = 120
    lr: float = 5e-4
    factor_lr_scale: float = 0.2
    schedule: str = "cosine"
    warmup: int = 10
    bf16: bool = False
    tokens: int = 512
    hidden_weight: float = 0.0
    eval_every: int = 20
    eval_tokens: int = 1024
    patience: int = 0
    max_minutes: float | None = None
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    dataset: str = DEFAULT_DATASET
    train_extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = [("steps", self.steps >= 1, "must be at least 1"), ("lr", self.lr > 0, "must be > 0"),
                  ("schedule", self.schedule in LR_SCHEDULES, f"must be one of {sorted(LR_SCHEDULES)}"),
                  ("factor_lr_scale", self.factor_lr_scale > 0, "must be > 0"),
                  ("warmup", self.warmup >= 0, "must be >= 0"),
                  ("tokens", self.tokens >= 8, "must be at least 8"),
                  ("hidden_weight", self.hidden_weight >= 0, "must be >= 0"),
                  ("eval_every", self.eval_every >= 1, "must be at least 1"),
                  ("eval_tokens", self.eval_tokens >= 2, "must be at least 2"),
                  ("patience", self.patience >= 0, "must be >= 0"),
                  ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "must be > 0"),
                  ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
                  ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
                  ("train_extra", self.dataset not in self.train_extra and len(set(self.train_extra))
                   == len(self.train_extra), "must name other corpora than dataset, each once")]
        ConfigError.check(self, checks)


@dataclass(frozen=True)
class Progress:
    """Reported after every step; ``search`` is set on the steps that evaluated. ``steps``: the steps the
    run will take (under a time budget, the schedule's, refitted at every evaluation)."""

    step: int
    steps: int
    loss: float
    seconds: float
    eta_s: float
    search: dict[str, float] | None = None
    best: bool = False
    checkpoint: Path | None = None


@dataclass
class RecoverResult:
    out: Path
    steps_run: int
    best_step: int
    before: dict[str, float]  # search-split metrics of the compressed model before training
    after: dict[str, float]  # ... of the state written (the best one)
    seconds: float
    peak_rss_mb: float
    resumed_from: int | None
    stopped_early: bool
    schedule_steps: int  # the steps the learning-rate schedule spanned (fitted to max_minutes)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["out"] = str(self.out)
        return payload


# -- the student --------------------------------------------------------------------------------
def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _keep_mask(session: ModelSession, name: str, cfg: LayerConfig, latent: Tensor) -> Tensor | None:
    """The fixed keep-mask of a dense-stored layer: exact from the cached score order when the layer
    is plain unstructured sparsity by a score, else the non-zeros of the sparsified (unquantized)
    weight (N:M, pruned factors, and reconstruction operators such as SparseGPT, whose kept weights
    are updated, not ranked)."""
    sparsity = cfg.sparsity
    if sparsity is None or sparsity.ratio == 0:
        return None
    if cfg.lowrank is None and sparsity.nm is None and isinstance(sparsity_handler(sparsity.score), ScoreSparsity):
        return unstructured_mask(session.ranks(sparsity.score)[name], sparsity.ratio)
    return latent != 0


def balance_factors(up: Tensor, down: Tensor) -> tuple[Tensor, Tensor]:
    """Rescale each rank component so that its column of ``up`` and its row of ``down`` have equal norms.

    The product is unchanged (up to float rounding), and so are the zeros; but SVD factors come as
    ``U·σ`` and ``Vt`` (or ``Vt·S^-1`` when whitened), whose entries differ in scale by orders of
    magnitude, and Adam moves every entry by about the learning rate whatever its scale: unbalanced,
    the small factor is wrecked within a few steps (the KL went from 1.6 to 31 in 5 steps on
    smollm2-135m). Not used on quantized layers: rescaling the columns of ``up`` would move its
    quantization groups' grids, so step 0 would no longer be the configured model.
    """
    up_norm, down_norm = up.norm(dim=0), down.norm(dim=1)
    ok = (up_norm > 0) & (down_norm > 0)
    scale = torch.where(ok, (down_norm / up_norm.where(ok, torch.ones_like(up_norm))).sqrt(),
                        torch.ones_like(up_norm))
    return up * scale[None, :], down / scale[:, None]


def constrained_layer(session: ModelSession, name: str, cfg: LayerConfig) -> ConstrainedLayer:
    """The trainable module computing exactly what ``session`` applies for ``cfg`` at step 0."""
    dense = session.modules[name]
    bias = None if dense.bias is None else dense.bias.detach()
    latent_cfg = replace(cfg, quant=None)  # the latent weights are the unquantized ones
    if is_factored(session.by_name[name], cfg):
        up, down = session.compressed_factors(name, latent_cfg)
        if cfg.quant is None:
            up, down = balance_factors(up, down)
        pruned = cfg.sparsity is not None and cfg.sparsity.ratio > 0
        return FactoredLinear(up.clone(), down.clone(), bias, up_mask=(up != 0) if pruned else None,
                              down_mask=(down != 0) if pruned else None, quant=cfg.quant)
    latent = session.compressed_weight(name, latent_cfg).clone()
    return MaskedLinear(latent, bias, mask=_keep_mask(session, name, cfg, latent), quant=cfg.quant)


def build_student(session: ModelSession, config: CompressionConfig) -> tuple[nn.Module, dict[str, ConstrainedLayer]]:
    """A copy of the dense model with every configured layer swapped for its constrained module."""
    session.check_model(config)
    session.warm(config)
    session.restore()
    student = copy.deepcopy(session.model)
    layers: dict[str, ConstrainedLayer] = {}
    for name, cfg in config.layers.items():
        layers[name] = constrained_layer(session, name, cfg)
        _set_module(student, name, layers[name])
    student.requires_grad_(True)
    for module in student.modules():
        if isinstance(module, nn.Embedding):
            module.requires_grad_(False)
    output = getattr(student, "get_output_embeddings", lambda: None)()
    if output is not None:
        output.requires_grad_(False)
    student.eval()  # no dropout: the run is deterministic, and resumes exactly
    return student, layers


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# -- data and loss ------------------------------------------------------------------------------
class Sampler:
    """Random training windows from the calibration splits; its generator is the run's only randomness."""

    def __init__(self, session: ModelSession, settings: RecoverSettings) -> None:
        self.kind = session.loaded.kind
        self.tokenizer = session.loaded.tokenizer
        if self.kind == "causal-lm":
            self.window, self.count = settings.tokens, 1
        else:
            self.window, self.count = ENCODER_SEQ_LEN - 2, max(1, settings.tokens // ENCODER_SEQ_LEN)
        self.streams = [token_stream(name, "calibration", self.tokenizer).ids
                        for name in (settings.dataset, *settings.train_extra)]
        for name, ids in zip((settings.dataset, *settings.train_extra), self.streams, strict=True):
            if ids.numel() <= self.window:
                raise DatasetError(f"the calibration split of {name!r} has {ids.numel()} tokens, "
                                   f"fewer than one training window of {self.window}")
        self.generator = torch.Generator().manual_seed(settings.seed)

    def _stream(self) -> Tensor:
        if len(self.streams) == 1:  # no draw: a single-corpus run samples exactly as before train_extra
            return self.streams[0]
        return self.streams[int(torch.randint(0, len(self.streams), (1,), generator=self.generator))]

    def next(self) -> Tensor:
        ids = self._stream()
        starts = torch.randint(0, ids.numel() - self.window + 1, (self.count,), generator=self.generator)
        windows = torch.stack([ids[int(s) : int(s) + self.window] for s in starts])
        if self.kind == "causal-lm":
            return windows
        cls = torch.full((self.count, 1), self.tokenizer.cls_token_id)
        sep = torch.full((self.count, 1), self.tokenizer.sep_token_id)
        return torch.cat([cls, windows, sep], dim=1)


def _forward(model: nn.Module, ids: Tensor, causal: bool, hidden: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    if causal:
        out = model(input_ids=ids, output_hidden_states=hidden)
        return out.logits.float(), tuple(out.hidden_states or ())
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=hidden)
    return out.last_hidden_state.float(), tuple(out.hidden_states or ())


def distillation_loss(student: nn.Module, teacher: nn.Module, ids: Tensor, *, causal: bool,
                      hidden_weight: float) -> Tensor:
    """KL(teacher || student) per token (causal) or 1 - cosine of last hidden states per token
    (encoder); plus ``hidden_weight`` × the mean relative MSE of the blocks' hidden states."""
    hidden = hidden_weight > 0
    with torch.no_grad():
        t_out, t_hidden = _forward(teacher, ids, causal, hidden)
    s_out, s_hidden = _forward(student, ids, causal, hidden)
    if causal:
        t_logp = F.log_softmax(t_out, dim=-1).flatten(0, 1)
        s_logp = F.log_softmax(s_out, dim=-1).flatten(0, 1)
        loss = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
    else:
        loss = (1 - F.cosine_similarity(s_out, t_out, dim=-1)).mean()
    if hidden:
        terms = [(s - t).square().mean() / t.square().mean().clamp_min(1e-12)
                 for s, t in zip(s_hidden[1:], t_hidden[1:], strict=True)]
        loss = loss + hidden_weight * torch.stack(terms).mean()
    return loss


def fitted_horizon(steps: int, done: int, seconds: float, budget_s: float) -> int:
    """The step count the schedule spans under a time budget: the steps done plus as many more as the
    seconds per step so far (evaluations included) say fit in what is left; within ``[done + 1, steps]``."""
    if done == 0:
        return steps
    more = int((budget_s - seconds) / (seconds / done))
    return max(done + 1, min(steps, done + more))


def search_score(metrics: Metrics) -> float:
    """Lower is better: KL to dense for causal LMs, 1 - cosine for encoders."""
    return metrics.kl if metrics.kl is not None else metrics.score("cosine")


def _metrics_dict(metrics: Metrics) -> dict[str, float]:
    return {key: value for key, value in (("ppl", metrics.ppl), ("kl", metrics.kl), ("cosine", metrics.cosine))
            if value is not None}


# -- checkpoints --------------------------------------------------------------------------------
def run_fingerprint(session: ModelSession, config: CompressionConfig, settings: RecoverSettings) -> str:
    """What a checkpoint must match to be resumed: model, config layers and settings."""
    layers = json.dumps(config.to_dict()["layers"], sort_keys=True)
    text = f"{session.loaded.fingerprint}|{layers}|{json.dumps(asdict(settings), sort_keys=True)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
    try:
        torch.save(state, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, weights_only=True)
    except (RuntimeError, OSError, EOFError) as exc:
        raise CorruptCheckpointError(f"recovery checkpoint {path} cannot be read ({exc})") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state.get("fingerprint") != fingerprint:
        raise ConfigError("resume", f"{path} was written for another model, config or settings; "
                                    "remove it (or pass the same arguments) to continue")
    return state


# -- the loop -----------------------------------------------------------------------------------
class _Run:
    """The mutable state of one recovery run: what a checkpoint holds."""

    def __init__(self, session: ModelSession, config: CompressionConfig, settings: RecoverSettings) -> None:
        self.session, self.settings = session, settings
        self.causal = session.loaded.kind == "causal-lm"
        self.student, self.layers = build_student(session, config)
        self.params = trainable_parameters(self.student)
        factors = {id(p) for layer in self.layers.values() if isinstance(layer, FactoredLinear)
                   for p in layer.parameters()}
        groups = [{"params": [p for p in self.params.values() if (id(p) in factors) == is_factor],
                   "lr_scale": settings.factor_lr_scale if is_factor else 1.0} for is_factor in (False, True)]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        self.sampler = Sampler(session, settings)
        self.evaluator: Evaluator = session.evaluator(dataset=settings.dataset, split="search",
                                                      tokens=settings.eval_tokens)
        self.step = 0
        self.best_step = 0
        self.best_score = math.inf
        self.best_state: dict[str, Tensor] = {}
        self.stale = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0  # training seconds before this process (resumed runs)
        self.horizon = settings.steps  # the steps the schedule spans (fitted to a time budget)

    def evaluate(self) -> tuple[dict[str, float], bool]:
        metrics = self.evaluator.evaluate(self.student)
        score = search_score(metrics)
        better = score < self.best_score
        if better:
            self.best_score, self.best_step, self.stale = score, self.step, 0
            self.best_state = {name: p.detach().clone() for name, p in self.params.items()}
        else:
            self.stale += 1
        record = {"step": float(self.step), **_metrics_dict(metrics)}
        self.history.append(record)
        return record, better

    def train_step(self) -> float:
        ids = self.sampler.next().to(self.session.device)
        with torch.autocast(self.session.device.type, dtype=torch.bfloat16, enabled=self.settings.bf16):
            loss = distillation_loss(self.student, self.session.model, ids, causal=self.causal,
                                     hidden_weight=self.settings.hidden_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rate = learning_rate(self.settings.lr, self.settings.schedule, self.settings.warmup,
                             self.step, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]
        torch.nn.utils.clip_grad_norm_(self.params.values(), self.settings.max_grad_norm)
        self.optimizer.step()
        for layer in self.layers.values():
            layer.project_()
        self.step += 1
        return float(loss.detach())

    def state(self, fingerprint: str, seconds: float) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": self.step,
                "params": {name: p.detach() for name, p in self.params.items()},
                "optimizer": self.optimizer.state_dict(), "generator": self.sampler.generator.get_state(),
                "best_step": self.best_step, "best_score": self.best_score, "best_state": self.best_state,
                "stale": self.stale, "history": self.history, "seconds": seconds, "horizon": self.horizon}

    def load(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.generator.set_state(state["generator"])
        self.step, self.best_step, self.best_score = state["step"], state["best_step"], state["best_score"]
        self.best_state, self.stale, self.history = state["best_state"], state["stale"], state["history"]
        self.seconds = float(state["seconds"])
        self.horizon = int(state.get("horizon", self.horizon))  # checkpoints before time-fitted schedules

    def load_best(self) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.best_state[name])

    def baked(self) -> nn.Module:
        """The student with plain modules holding the constrained weights (what the export stores)."""
        for name, layer in self.layers.items():
            _set_module(self.student, name, layer.bake())
        self.student.requires_grad_(False)
        return self.student


def recover(session: ModelSession, config: CompressionConfig, out: str | Path, *,
            settings: RecoverSettings | None = None, checkpoint_dir: str | Path | None = None,
            resume: bool = False, force: bool = False,
            on_progress: Callable[[Progress], None] | None = None) -> RecoverResult:
    """Distil ``session``'s dense model into ``config`` and write the result to ``out``.

    ``checkpoint_dir`` (default ``<out>.recover-checkpoint``) holds the checkpoint; it is removed
    after the export is written. If it already holds a checkpoint, ``resume`` must say to continue
    from it (a checkpoint for other arguments is refused); without ``resume`` the run refuses to
    start rather than silently overwrite or reuse it.
    """
    settings = settings or RecoverSettings()
    out = Path(out).expanduser().absolute()
    check_target(out, force=force)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(f"{out.name}.recover-checkpoint")
    ckpt = ckpt_dir / CHECKPOINT_NAME
    if ckpt.is_file() and not resume:
        raise ConfigError("resume", f"{ckpt} holds a checkpoint of an earlier run: pass --resume to "
                                    "continue it, or remove it to start over")
    run = _Run(session, config, settings)
    fingerprint = run_fingerprint(session, config, settings)
    resumed_from = None
    if resume and ckpt.is_file():
        run.load(load_checkpoint(ckpt, fingerprint))
        resumed_from = run.step
    start = time.perf_counter()
    if run.step == 0 and not run.history:
        record, _ = run.evaluate()
        _report(on_progress, Progress(0, run.horizon, math.nan, 0.0, math.nan, record, True))
    stopped_early = False
    first_step = run.step
    while run.step < run.horizon:
        loss = run.train_step()
        elapsed = time.perf_counter() - start
        eta = elapsed / (run.step - first_step) * (run.horizon - run.step)
        record_or_none, better, saved = None, False, None
        out_of_time = settings.max_minutes is not None and run.seconds + elapsed >= settings.max_minutes * 60
        if run.step % settings.eval_every == 0 or run.step == run.horizon or out_of_time:
            record_or_none, better = run.evaluate()
            used = run.seconds + time.perf_counter() - start
            if settings.max_minutes is not None and run.step < run.horizon:  # a schedule that ended stays ended
                run.horizon = fitted_horizon(settings.steps, run.step, used, settings.max_minutes * 60)
            save_checkpoint(ckpt, run.state(fingerprint, used))
            saved = ckpt
        _report(on_progress, Progress(run.step, run.horizon, loss, run.seconds + elapsed, eta,
                                      record_or_none, better, saved))
        if out_of_time or (record_or_none is not None and settings.patience and run.stale >= settings.patience):
            stopped_early = True
            break
    seconds = run.seconds + time.perf_counter() - start
    before = {k: v for k, v in run.history[0].items() if k != "step"}
    after = next({k: v for k, v in h.items() if k != "step"} for h in run.history if h["step"] == run.best_step)
    run.load_best()
    meta = {**config.meta, "recovered": {
        "steps": settings.steps, "steps_run": run.step, "best_step": run.best_step, "lr": settings.lr,
        "factor_lr_scale": settings.factor_lr_scale,
        "schedule": settings.schedule, "warmup": settings.warmup, "schedule_steps": run.horizon,
        "bf16": settings.bf16,
        "tokens_per_step": settings.tokens, "tokens_seen": run.step * settings.tokens,
        "hidden_weight": settings.hidden_weight, "seed": settings.seed, "dataset": settings.dataset,
        "train_extra": list(settings.train_extra), "train_split": "calibration", "early_stop_split": "search",
        "eval_tokens": settings.eval_tokens,
        "search_before": before, "search_after": after, "seconds": round(seconds, 1)}}
    recovered = CompressionConfig(config.model_id, config.layers, meta)
    write_recovered(session, recovered, run.baked(), out, force=force)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return RecoverResult(out=out, steps_run=run.step, best_step=run.best_step, before=before, after=after,
                         seconds=seconds, peak_rss_mb=peak_rss_mb(), resumed_from=resumed_from,
                         stopped_early=stopped_early, schedule_steps=run.horizon, history=run.history)


def distil(session: ModelSession, config: CompressionConfig, settings: RecoverSettings) -> nn.Module:
    """``config``'s student trained for ``settings.steps`` steps, in memory: no evaluation, checkpoint
    or export (the search's recovery-aware objective distils every surviving candidate briefly)."""
    run = _Run(session, config, settings)
    while run.step < settings.steps:
        run.train_step()
    run.student.requires_grad_(False)
    return run.student


def _report(callback: Callable[[Progress], None] | None, progress: Progress) -> None:
    if callback is not None:
        callback(progress)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_recovered(session: ModelSession, config: CompressionConfig, model: nn.Module, out: Path, *,
                    force: bool) -> None:
    """Write ``model`` (baked: plain Linear / LowRankLinear) as a ``compress.export`` directory:
    staged next to ``out`` and renamed into place, with the config document and the manifest."""
    with staged_directory(out, force=force) as staging:
        save_weights(model, staging)
        session.loaded.tokenizer.save_pretrained(staging)
        config.save(staging / CONFIG_NAME)
        dtype = next(iter(model.parameters())).dtype
        manifest = build_manifest(session, config, merge=False, export_format="slimscout", dtype=dtype,
                                  model_file_bytes=files_bytes(staging), stored_params=count_params(model))
        manifest["recovered"] = config.meta["recovered"]
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
