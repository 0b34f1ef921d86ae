"""A loaded model plus its per-model caches; applies a config in place and restores it exactly.

What is expensive is done once per (model, calibration data) and persisted on disk under
``cache_dir/stats/<model fingerprint>-<data fingerprint>/`` (safetensors), then reused across
trials, processes and restarts: calibration Gram matrices, SVD factors (per low-rank method), and
per-row score orders (per score-based sparsity method). Applying a config is then a few small
matmuls and masks per layer; restoring copies the dense weights back, bit for bit.

Memory: a model whose linear weights exceed ``settings.in_memory_caches_max_bytes`` runs "low
memory": the dense copies of overwritten layers go to scratch files, the Grams are read from disk
one layer at a time, and sparsity masks are computed per layer when applied instead of from the
ranks cache (which would be another model-sized tensor set). The model may be bfloat16; the
maths runs in float32 (``dense_weight``), and every cache follows the model's device.

Every operator is reached through its handler (``compress.operators``, named by
``compress.registry``): the session owns the caches and the order of the stages (low rank,
sparsity, quantization), the handlers own the maths. The session is the handlers'
``LayerContext``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from common.errors import ConfigError
from common.progress import StepProgress, bound
from common.settings import get_settings
from compress.accounting import LayerCost, model_cost
from compress.calibration import CalibrationStats
from compress.catalog import LoadedModel, load_model
from compress.config import CompressionConfig, LayerConfig
from compress.corpora import DEFAULT_DATASET
from compress.data import Split, token_stream
from compress.dense_copies import DenseCopies
from compress.layers import LinearLayer, count_params, linear_layers
from compress.measure import Evaluator
from compress.operators import lowrank_handler, quant_handler, score_handler, sparsity_handler
from compress.operators.base import SparsityHandler
from compress.ops import SVDFactors, lowrank_params, pruned_per_row, row_ranks, unstructured_mask

log = logging.getLogger(__name__)
DEFAULT_CALIBRATION_TOKENS = 4096


@dataclass
class CacheTimings:
    """Seconds this process spent building (not loading) each cache; loading is counted apart."""

    calibration_s: float = 0.0
    svd_s: float = 0.0
    ranks_s: float = 0.0
    load_s: float = 0.0
    built: list[str] = field(default_factory=list)


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def _load(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {key: fh.get_tensor(key).to(device) for key in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118


class ModelSession:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        cache_dir: Path | None = None,
        calibration_dataset: str = DEFAULT_DATASET,
        calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
        low_memory: bool | None = None,
    ) -> None:
        """``low_memory=None`` decides by the model's size (see the module's docstring)."""
        self.loaded = loaded
        self.model: nn.Module = loaded.model
        self.device = loaded.device
        settings = get_settings()
        self.cache_root = cache_dir or settings.cache_dir
        self.layers: list[LinearLayer] = linear_layers(self.model)
        self.by_name = {layer.name: layer for layer in self.layers}
        modules = dict(self.model.named_modules())
        self.modules: dict[str, nn.Linear] = {layer.name: modules[layer.name] for layer in self.layers}
        linear_bytes = sum(module.weight.nbytes for module in self.modules.values())
        self.low_memory = linear_bytes > settings.in_memory_caches_max_bytes if low_memory is None else low_memory
        self._dense = DenseCopies(self.modules, spill_root=self.cache_root / "scratch" if self.low_memory else None)
        self.calibration_dataset = calibration_dataset
        self.calibration_tokens = calibration_tokens
        self._calib_ids: torch.Tensor | None = None
        self._stats: CalibrationStats | None = None
        self._svd: dict[str, dict[str, SVDFactors]] = {}
        self._ranks: dict[str, dict[str, torch.Tensor]] = {}
        self._applied: set[str] = set()
        # Layers holding unstructured sparsity written from the ranks: (score, weights pruned per row).
        self._pruned: dict[str, tuple[str, int]] = {}
        # What each applied layer holds (its LayerConfig, or a writer's tag): asked for the same again, a
        # layer is not rewritten, so a trial that changes a few layers pays for those only.
        self._holds: dict[str, Hashable] = {}
        self._orders: dict[str, dict[str, torch.Tensor]] = {}
        self._handler_caches: dict[str, dict[str, object]] = {}
        self.timings = CacheTimings()
        self.progress: StepProgress | None = None  # where cache builds report (``reporting``)
        self.params_total = count_params(self.model)
        self.params_linear = sum(layer.params for layer in self.layers)

    @classmethod
    def open(cls, model_id: str, *, device: str = "cpu", dtype: str = "float32", **kwargs: object) -> ModelSession:
        return cls(load_model(model_id, device=device, dtype=dtype), **kwargs)  # type: ignore[arg-type]

    # -- caches ------------------------------------------------------------------------------
    @contextmanager
    def reporting(self, progress: StepProgress | None) -> Iterator[None]:
        """Cache builds inside the block report to ``progress``: the calibration statistics by block,
        factors and ranks by layer. Caches are built lazily, by whatever needs them first (a baseline's
        scan, a trial), so the report comes from here rather than from each caller."""
        before, self.progress = self.progress, progress
        try:
            yield
        finally:
            self.progress = before

    def _calibration_ids(self) -> torch.Tensor:
        if self._calib_ids is None:
            stream = token_stream(self.calibration_dataset, "calibration", self.loaded.tokenizer)
            self._calib_ids = stream.ids[: min(self.calibration_tokens, stream.ids.numel())]
        return self._calib_ids

    @property
    def cache_dir(self) -> Path:
        digest = hashlib.sha256(self._calibration_ids().numpy().tobytes()).hexdigest()[:12]
        return self.cache_root / "stats" / f"{self.loaded.fingerprint}-{self.calibration_dataset}-{digest}"

    def stats(self) -> CalibrationStats:
        if self._stats is not None:
            return self._stats
        directory = self.cache_dir / "grams"
        start = time.perf_counter()
        stats = CalibrationStats.load(directory, keep_in_memory=not self.low_memory, device=self.device)
        if stats is not None:
            self.timings.load_s += time.perf_counter() - start
            self._stats = stats
            return stats
        with self.dense():
            stats = CalibrationStats.collect_to(directory, self.model, self.layers, self._calibration_ids(),
                                                keep_in_memory=not self.low_memory,
                                                on_stage=bound(self.progress, "calibration statistics"))
        self.timings.calibration_s += stats.seconds
        self.timings.built.append("calibration")
        self._stats = stats
        return stats

    def dense_weight(self, name: str) -> torch.Tensor:
        """Layer ``name``'s dense weight, float32, on the model's device (maybe the session's copy: do not modify)."""
        return self._dense.get(name).float()

    def stored_dense_weight(self, name: str) -> torch.Tensor:
        """Like ``dense_weight``, but in the model's own dtype: for code that makes its own float32 copy
        anyway (a bfloat16 model's weight is then not copied twice; maybe the module's own tensor)."""
        return self._dense.get(name)

    def handler_cache(self, owner: str) -> dict[str, object]:
        """A per-session dict a handler keeps its own state in (e.g. a loaded level database)."""
        return self._handler_caches.setdefault(owner, {})

    def svd(self, method: str) -> dict[str, SVDFactors]:
        """All layers' factors for low-rank ``method`` (built once by its handler, then from disk)."""
        if method in self._svd:
            return self._svd[method]
        handler = lowrank_handler(method)
        path = self.cache_dir / f"{method}.safetensors"
        if path.is_file():
            start = time.perf_counter()
            tensors, _ = _load(path, self.device)
            factors = {
                name: SVDFactors(tensors[f"{name}.left"], tensors[f"{name}.right"], tensors[f"{name}.sigma"])
                for name in self.by_name
            }
            self.timings.load_s += time.perf_counter() - start
        else:
            stats = self.stats() if handler.needs_stats else None
            start = time.perf_counter()
            factors = {
                name: handler.factors(self.dense_weight(name), stats.gram(name) if stats else None)
                for name in self._counted(self.by_name, f"{method} factors")
            }
            self.timings.svd_s += time.perf_counter() - start
            self.timings.built.append(method)
            _save(
                path,
                {
                    f"{name}.{part}": getattr(f, part)
                    for name, f in factors.items()
                    for part in ("left", "right", "sigma")
                },
            )
        self._svd[method] = factors
        return factors

    def _counted(self, names: Iterable[str], step: str) -> Iterator[str]:
        """``names`` one by one, reported to ``self.progress`` as ``step``: a name counts as done when
        the loop asks for the next one (0 of n first, n of n once the loop is through)."""
        names = list(names)
        report = bound(self.progress, step)
        for done, name in enumerate(names):
            if report:
                report(done, len(names))
            yield name
        if report:
            report(len(names), len(names))

    def _input_norm(self, handler: SparsityHandler, name: str) -> torch.Tensor | None:
        return self.stats().input_norm(name) if handler.needs_stats else None

    def score(self, kind: str, name: str) -> torch.Tensor:
        """Layer ``name``'s dense weight scored by the score-based sparsity method ``kind``."""
        handler = score_handler(kind)
        return handler.score(self.dense_weight(name), self._input_norm(handler, name))

    def ranks(self, kind: str) -> dict[str, torch.Tensor]:
        """Per-row rank of every weight under a sparsity score; any ratio's mask is one comparison."""
        if kind in self._ranks:
            return self._ranks[kind]
        handler = score_handler(kind)  # an unknown or unranked method fails here, before any file is read
        path = self.cache_dir / f"ranks-{kind}.safetensors"
        if path.is_file():
            start = time.perf_counter()
            ranks, _ = _load(path, self.device)
            self.timings.load_s += time.perf_counter() - start
        else:
            if handler.needs_stats:
                self.stats()  # first, so its progress is reported before the ranks', not inside them
            start = time.perf_counter()
            ranks = {
                name: row_ranks(self.score(kind, name)).to(
                    torch.int16 if self.by_name[name].in_features < 2**15 else torch.int32)
                for name in self._counted(self.by_name, f"{kind} ranks")
            }
            self.timings.ranks_s += time.perf_counter() - start
            self.timings.built.append(f"ranks-{kind}")
            _save(path, ranks)
        self._ranks[kind] = ranks
        return ranks

    def warm(self, config: CompressionConfig) -> None:
        """Build or load every cache this config needs (so apply timings measure only applying)."""
        for name, layer_cfg in config.layers.items():
            if layer_cfg.lowrank:
                self.svd(layer_cfg.lowrank.method)
            if layer_cfg.sparsity:
                handler = sparsity_handler(layer_cfg.sparsity.score)
                if handler.needs_stats:
                    self.stats()
                if (handler.ranked and layer_cfg.sparsity.pattern == "unstructured" and not layer_cfg.lowrank
                        and not self.low_memory):
                    self.ranks(layer_cfg.sparsity.score)
                handler.warm(self, name, layer_cfg.sparsity)
            if layer_cfg.quant:
                quant_handler(layer_cfg.quant.method).warm(self, name, layer_cfg.quant)

    # -- accounting --------------------------------------------------------------------------
    def cost(self, config: CompressionConfig) -> LayerCost:
        """Validates the config against this model (names, ranks, N:M) and counts it exactly."""
        return model_cost(self.layers, config.layers)

    def check_model(self, config: CompressionConfig) -> None:
        if config.model_id != self.loaded.model_id:
            raise ConfigError("model_id", f"config is for {config.model_id!r}, not {self.loaded.model_id!r}")
        self.cost(config)

    # -- applying ----------------------------------------------------------------------------
    def _quantize(self, matrix: torch.Tensor, cfg: LayerConfig, name: str) -> torch.Tensor:
        quant = cfg.quant
        assert quant is not None
        return quant_handler(quant.method).quantize(self, name, matrix, quant)

    def compressed_weight(self, name: str, cfg: LayerConfig) -> torch.Tensor:
        """The dense-shaped weight that layer ``name`` computes with under ``cfg``."""
        layer = self.by_name[name]
        sparsity = cfg.sparsity
        handler = sparsity_handler(sparsity.score) if sparsity is not None else None
        if cfg.lowrank is None:
            weight = self.dense_weight(name)
            if sparsity is not None and handler is not None:
                use_ranks = handler.ranked and sparsity.nm is None and not self.low_memory
                cached = self.ranks(sparsity.score)[name] if use_ranks else None
                norm = self._input_norm(handler, name) if cached is None else None
                weight = handler.sparsify(self, name, weight, sparsity, col_norm=norm, ranks=cached)
            return self._quantize(weight, cfg, name) if cfg.quant is not None else weight
        rank = cfg.lowrank.rank
        if lowrank_params(layer.in_features, layer.out_features, rank) >= layer.params:
            factors = self.svd(cfg.lowrank.method)[name]
            weight = factors.left[:, :rank] @ factors.right[:rank]  # stored dense: factoring would not save
            if sparsity is not None and handler is not None:
                weight = handler.sparsify(self, name, weight, sparsity, col_norm=self._input_norm(handler, name))
            return self._quantize(weight, cfg, name) if cfg.quant is not None else weight
        left, right = self.compressed_factors(name, cfg)
        return left @ right

    def compressed_factors(self, name: str, cfg: LayerConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """``left`` [out, r] and ``right`` [r, in] of a factored layer (sparsified, quantized), as stored.

        ``right`` is pruned by the layer's input norms, ``left`` by the norms of the latent inputs
        ``x·rightᵀ`` (both on the calibration data), when the sparsity method uses norms.
        """
        assert cfg.lowrank is not None
        rank = cfg.lowrank.rank
        factors = self.svd(cfg.lowrank.method)[name]
        left, right = factors.left[:, :rank], factors.right[:rank]
        sparsity = cfg.sparsity
        if sparsity is not None:
            handler = sparsity_handler(sparsity.score)
            norm = self._input_norm(handler, name)
            latent = (right @ self.stats().gram(name) @ right.T).diagonal().clamp_min(0).sqrt() \
                if handler.needs_stats else None
            right = handler.sparsify(self, name, right, sparsity, col_norm=norm)
            left = handler.sparsify(self, name, left, sparsity, col_norm=latent)
        if cfg.quant is not None:
            left, right = self._quantize(left, cfg, name), self._quantize(right, cfg, name)
        return left, right

    def apply(self, config: CompressionConfig) -> float:
        """Put ``config`` on the model (after restoring dense); returns the seconds it took."""
        self.cost(config)
        start = time.perf_counter()
        self.restore(keep=set(config.layers))  # the others are overwritten below anyway
        with torch.no_grad():
            for name, cfg in config.layers.items():
                if self.holds(name, cfg):
                    continue
                self._dense.keep(name)
                weight = self.modules[name].weight
                if not self._write_masked(weight, name, cfg):
                    self._pruned.pop(name, None)
                    weight.copy_(self.compressed_weight(name, cfg))
                self._applied.add(name)
                self._holds[name] = cfg
        return time.perf_counter() - start

    def holds(self, name: str, tag: Hashable) -> bool:
        """Whether layer ``name`` holds what ``tag`` stands for (written by ``apply`` or ``write``)."""
        return name in self._applied and self._holds.get(name) == tag

    def write(self, name: str, tag: Hashable, weight: Callable[[], torch.Tensor]) -> bool:
        """Write ``weight()`` into layer ``name`` unless it already holds ``tag``; whether it wrote.

        For weights made outside the operators (a level database's stored levels): ``tag`` must stand
        for the weight exactly, and ``restore()`` puts the dense weight back as for an applied config.
        """
        if self.holds(name, tag):
            return False
        self._dense.keep(name)
        with torch.no_grad():
            self.modules[name].weight.copy_(weight())
        self._pruned.pop(name, None)
        self._applied.add(name)
        self._holds[name] = tag
        return True

    def _write_masked(self, out: torch.Tensor, name: str, cfg: LayerConfig) -> bool:
        """Unstructured sparsity alone: write it into ``out`` from the cached ranks; False if not that case.

        Applying is memory-bound on a CPU, so this touches as few bytes as it can. If ``out`` holds
        the same score's sparsity at another ratio (the previous trial's) or is dense, only the
        weights whose fate differs are written: those ranked between the two cut-offs, zeroed or
        copied back from dense. Otherwise (or when most of the row changes) it is one fused pass.
        """
        sparsity = cfg.sparsity
        if cfg.lowrank is not None or cfg.quant is not None or sparsity is None or sparsity.nm is not None:
            return False
        if not sparsity_handler(sparsity.score).ranked or self.low_memory:
            return False
        in_features = int(out.shape[1])
        cut = pruned_per_row(in_features, sparsity.ratio)
        if name not in self._applied:
            current: tuple[str, int] | None = (sparsity.score, 0)
        else:
            current = self._pruned.get(name)
        if current is not None and current[0] == sparsity.score and abs(cut - current[1]) < in_features // 2:
            lo, hi = sorted((current[1], cut))
            if hi > lo:
                index = self.orders(sparsity.score)[name][:, lo:hi].long()
                if cut > current[1]:
                    out.scatter_(1, index, 0.0)
                else:
                    out.scatter_(1, index, self._dense.get(name).gather(1, index))
        else:
            ranks = self.ranks(sparsity.score)[name]
            zero = torch.zeros((), dtype=out.dtype, device=out.device)
            torch.where(unstructured_mask(ranks, sparsity.ratio), self._dense.get(name), zero, out=out)
        self._pruned[name] = (sparsity.score, cut)
        return True

    def orders(self, kind: str) -> dict[str, torch.Tensor]:
        """Per row, the columns from the lowest score up (the inverse of ``ranks``); built in memory once."""
        if kind not in self._orders:
            orders = {}
            for name, ranks in self.ranks(kind).items():
                columns = torch.arange(ranks.shape[1], dtype=ranks.dtype, device=ranks.device).expand_as(ranks)
                orders[name] = torch.empty_like(ranks).scatter_(1, ranks.long(), columns)
            self._orders[kind] = orders
        return self._orders[kind]

    def restore(self, keep: set[str] | None = None) -> None:
        """Put the dense weights back (except in ``keep``, which the caller is about to overwrite)."""
        with torch.no_grad():
            for name in self._applied - (keep or set()):
                self.modules[name].weight.copy_(self._dense.get(name))
                self._pruned.pop(name, None)
                self._holds.pop(name, None)
        self._applied &= keep or set()

    @contextmanager
    def applied(self, config: CompressionConfig, *, restore_after: bool = True) -> Iterator[float]:
        """Run with ``config`` on the model; yields the seconds applying it took.

        ``restore_after=False`` leaves the weights compressed afterwards, for a caller that applies
        another config next anyway (the search's trials): ``apply`` only restores the layers it does
        not overwrite, and whatever needs the dense model (calibration, an evaluator's reference)
        runs under ``dense()``, so skipping the restore saves a full pass over the weights per trial.
        """
        seconds = self.apply(config)
        try:
            yield seconds
        finally:
            if restore_after:
                self.restore()

    @contextmanager
    def dense(self) -> Iterator[None]:
        """Run with dense weights; whatever was applied is put back afterwards."""
        applied = {name: self.modules[name].weight.detach().clone() for name in self._applied}
        pruned, holds = dict(self._pruned), dict(self._holds)
        self.restore()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, weight in applied.items():
                    self.modules[name].weight.copy_(weight)
                    self._applied.add(name)
            self._pruned.update(pruned)
            self._holds.update(holds)

    # -- measuring ---------------------------------------------------------------------------
    def evaluator(self, *, dataset: str = DEFAULT_DATASET, split: Split = "search", tokens: int = 2048) -> Evaluator:
        ids = token_stream(dataset, split, self.loaded.tokenizer).take(tokens)
        evaluator = Evaluator(self.loaded, ids, cache_dir=self.cache_root)
        with self.dense():
            evaluator.reference()
        return evaluator
