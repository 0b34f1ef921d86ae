"""``evolve``: an EvoPress-style (1+λ) evolutionary search over per-layer levels, multi-fidelity.

A config is one integer per layer, in the level space of the study's operator (``search.levels``,
a registry by operator family): unstructured sparsity, the weights each layer prunes per row, in
steps of the same count of weights for every layer (EvoPress's grid: ``n = min(U{1,3}, U{1,3})``
layers one level down and ``n`` others one level up); low rank, each layer's rank, pairs of layers
trading an exact count of weights; a budget in bits, each layer's bit width, pairs moving one width
each way with exactly equal stored bits. Every mutation keeps the budget's exact count (kept
weights, or stored bits as ``compress.accounting`` counts them) unchanged, asserted for every offspring.

The starting parent is the best measured baseline seed of the study that lies on the level grid
(uniform, OWL, sensitivity: whichever scored best; the uniform allocation, measured first, when the
study has none). A
generation measures ``offspring`` mutants of the parent on the cheapest fidelity, then re-measures
the best few on more tokens, stage by stage (EvoPress's multi-step selection), up to the study's
``eval_tokens``. Fidelities are prefixes of the study's evaluation tokens, ×4 apart, at most three
stages, at least one evaluation chunk: 2,048 tokens → 512, 2,048; 8,192 → 512, 2,048, 8,192. Since
every fidelity is a prefix of the same tokens, the parent re-enters each stage for free: its score
on the first T tokens is its intermediate value there. An offspring goes on only if it ranks ahead
of the parent at the stage before (a paired comparison on the same tokens) and among the best
``offspring // 4**s``; the best of the parent and the full-fidelity survivors is the next parent.

Every offspring is an ordinary queued trial (its config document in ``seed_config``, its fidelity
in ``fidelity_tokens``, its stage in ``stage``), so workers, dashboard and the reaper work as for
any other strategy. A lower-fidelity trial ends PRUNED (``search.measure_trial``), so the study's
best — the digest's, the holdout's — is always a full-fidelity trial.

Screening (``spec.screen_factor``; 1 turns it off; sparsity levels only, since the ranker's damage
features are sparsity's: a ConfigError for low rank and bits): a generation draws ``screen_factor × offspring``
distinct mutants, each budget-exact, and measures only the ``offspring`` that the damage predictor
(``predictor.rank.ConfigRanker``: the log additive damage estimate plus XGBoost on the residual)
ranks best. The ranker is fitted afresh for every generation on each distinct config the study
measured, scored on the cheapest fidelity's tokens (every trial's first reports cover them, so the
seeds and the re-measured survivors count too). Until there are ``min_pairs`` such configs the first
``offspring`` drawn are measured, exactly those ``screen_factor`` 1 measures (one random stream).
The study attribute ``screening`` (``SCREENING_ATTR``; the summary's ``screening``) counts, per
generation, the candidates screened out, the cheapest-fidelity forward tokens that saved and the
seconds the ranker took (its features of the measured configs, its fit, its scores); each
screened trial keeps its ``screen_score`` (ConfigRanker's: the predicted log objective there).

The ranker's features need the model (calibration Grams, per-layer damage): the proposer is called
with the worker's ``Workbench``, which holds the session, so ``SessionRankers`` builds the features
from ``bench.session`` once per process and a fresh ranker per generation; tests pass their own
``rankers``. Its features include the per-layer solo KLs only where ``baseline --method additive``
left that scan in the model's cache: the same spec screens alike on machines with the same cache.

The state is read back from the study's trials on every call (nothing lives in the worker but the
features' caches), and every random draw is seeded by (seed, generation): the same spec measures the
same trials. A stage is a barrier: while any trial is still out, the proposer waits for it (another
worker's result decides what comes next).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from common.errors import ConfigError
from common.progress import StepProgress
from compress.baselines import uniform
from compress.config import CompressionConfig, config_from_dict
from compress.operators import levelled
from predictor.features import FeatureBuilder
from predictor.rank import ConfigLayers, ConfigRanker, damage_builder
from search.context import Workbench
from search.levels import Levels, level_space
from search.levels.base import distinct
from search.measure_trial import FIDELITY_ATTR, fidelity_chunks
from search.optuna_adapter import SCREENING_ATTR
from search.space import enqueue_exact
from search.spec import StudySpec
from search.strategies.tpe import tpe_sampler
from search.study import Counts, counts

log = logging.getLogger(__name__)
SOURCE = "evolve"
PARENT_SOURCE = "evolve:parent"  # the uniform allocation, when the study has no baseline to start from
GENERATION_ATTR = "generation"
STAGE_ATTR = "stage"
SCORE_ATTR = "screen_score"
STUDY_ATTR = "evolve"  # the study's user attribute: where the evolution stands (for the dashboard)
FIDELITY_RATIO = 4
MAX_STAGES = 3
LEVELS = 4  # the level grid's step: EvoPress's, for this many levels either side of the budget
#: Levels either side of each seed that the level database holds before the first trial. A generation
#: moves a layer by one level, so a parent's first generations stay inside it; settings further out are
#: computed when a trial first needs them (and then kept, like the rest).
DATABASE_RADIUS = 2
DATABASE_STEP = "level database"  # the setup step's name (the dashboard's, the CLI's)
PENDING = (TrialState.RUNNING, TrialState.WAITING)


def fidelities(eval_tokens: int, seq_len: int) -> list[int]:
    """Token counts of the stages, cheapest first, ending at ``eval_tokens`` (see the module doc)."""
    out = [eval_tokens]
    while len(out) < MAX_STAGES and out[0] > seq_len:
        out.insert(0, max(seq_len, out[0] // FIDELITY_RATIO // seq_len * seq_len))
    return out


def survivors(offspring: int, n_stages: int) -> list[int]:
    """How many offspring each stage measures: all of them, then a quarter as many per stage (at least 1)."""
    return [offspring] + [max(1, offspring // FIDELITY_RATIO**s) for s in range(1, n_stages)]


class Ranker(Protocol):
    """What screening needs of a ranker (``predictor.rank.ConfigRanker``): lower scores are better."""

    min_pairs: int

    def observe(self, configs: Sequence[ConfigLayers], values: Sequence[float]) -> None: ...

    def rank(self, configs: Sequence[ConfigLayers]) -> np.ndarray: ...


#: ``rankers(spec, bench)``: an unfitted ranker for the study's model.
RankerFactory = Callable[[StudySpec, Workbench], Ranker]


@dataclass
class SessionRankers:
    """A fresh ``ConfigRanker`` per call, on the damage features of the study's model (built once per process)."""

    _builders: dict[tuple[Any, ...], FeatureBuilder] = field(default_factory=dict)

    def __call__(self, spec: StudySpec, bench: Workbench) -> ConfigRanker:
        key = (spec.model_id, spec.budget_ratio, tuple(spec.operators), spec.dataset)
        if key not in self._builders:
            self._builders[key] = damage_builder(bench.session(spec.model_id), spec.budget_ratio, spec.operators,
                                                 dataset=spec.dataset)
        return ConfigRanker(self._builders[key], seed=spec.seed)


@dataclass(frozen=True)
class Batch:
    """Configs to enqueue at one stage of one generation."""

    generation: int
    stage: int
    configs: list[np.ndarray]
    parent: FrozenTrial
    drawn: int = 0  # screened: how many candidates ``configs`` are the best of (0: not screened)
    scores: list[float] = field(default_factory=list)  # screened: the ranker's score of each config
    rank_s: float = 0.0  # screened: seconds spent fitting the ranker and scoring the candidates

    @property
    def screened_out(self) -> int:
        return self.drawn - len(self.configs) if self.drawn else 0


def _score_at(trial: FrozenTrial, tokens: int, seq_len: int) -> float:
    """The trial's objective on the first ``tokens`` evaluation tokens (its report after that chunk)."""
    value = trial.intermediate_values.get(fidelity_chunks(tokens, seq_len) - 1)
    return float("inf") if value is None else float(value)


def measured_pairs(live: list[FrozenTrial], tokens: int, seq_len: int) -> tuple[list[ConfigLayers], list[float]]:
    """Each distinct config the study measured on at least the first ``tokens`` tokens, and its score there."""
    found: dict[str, tuple[ConfigLayers, float]] = {}
    for trial in sorted(live, key=lambda t: t.number):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or "config" not in trial.user_attrs:
            continue
        value = _score_at(trial, tokens, seq_len)
        key = json.dumps(trial.user_attrs["config"]["layers"], sort_keys=True)
        if math.isfinite(value) and value > 0 and key not in found:
            found[key] = (config_from_dict(trial.user_attrs["config"]).layers, value)
    return [layers for layers, _ in found.values()], [value for _, value in found.values()]


def record_screening(study: optuna.Study, batch: Batch, fidelity_tokens: int) -> None:
    """Count ``batch``'s screened-out candidates into the study's ``screening`` (idempotent per generation)."""
    previous = study.user_attrs.get(SCREENING_ATTR) or {}
    generations = dict(previous.get("generations", {}))
    generations[str(batch.generation)] = {"drawn": batch.drawn, "queued": len(batch.configs),
                                          "screened_out": batch.screened_out, "rank_s": round(batch.rank_s, 3)}
    screened_out = sum(int(g["screened_out"]) for g in generations.values())
    study.set_user_attr(SCREENING_ATTR, {
        "screened_out": screened_out, "fidelity_tokens": fidelity_tokens,
        "saved_tokens": screened_out * fidelity_tokens,
        "rank_s": round(sum(float(g["rank_s"]) for g in generations.values()), 3), "generations": generations})


@dataclass
class Evolution:
    """The proposer: when the queue is empty, enqueue the next stage of the current generation."""

    offspring: int = 8
    levels: int = LEVELS
    wait_s: float = 600.0
    poll_s: float = 1.0
    rankers: RankerFactory = field(default_factory=SessionRankers)

    def __call__(self, study: optuna.Study, spec: StudySpec, bench: Workbench, now: Counts) -> int:
        deadline = time.monotonic() + self.wait_s
        while True:
            open_slots = spec.n_trials - (now.finished + now.running + now.waiting)
            if open_slots <= 0 or now.waiting:
                return 0
            if not now.running:  # a barrier: decide only on every result so far
                return self.propose(study, spec, bench, open_slots)
            if time.monotonic() > deadline:
                log.warning("evolve: waited %.0f s for running trials of %s; the sampler proposes instead",
                            self.wait_s, study.study_name)
                return 0
            time.sleep(self.poll_s)
            now = counts(study)

    def propose(self, study: optuna.Study, spec: StudySpec, bench: Workbench, open_slots: int) -> int:
        space = bench.space(spec)
        levels = level_space(space, self.levels, screened=spec.screen_factor > 1)
        seq_len = bench.evaluator(spec.model_id, spec.dataset, spec.split, spec.eval_tokens).seq_len
        live = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
        starts = [t for t in live if t.state == TrialState.COMPLETE and str(t.user_attrs.get("source", "")).startswith(
            ("baseline:", PARENT_SOURCE)) and levels.on_grid(config_from_dict(t.user_attrs["config"]))]
        if not starts:
            if any(t.user_attrs.get("source") == PARENT_SOURCE for t in live):
                raise ConfigError("strategy", "evolve found no measured seed on its level grid, the uniform "
                                              "allocation included")
            start = uniform(bench.session(spec.model_id), spec.budget_ratio, spec.operators).allocation
            enqueue_exact(study, space, start, {"source": PARENT_SOURCE})
            return 1
        parent = min(starts, key=lambda t: (float(t.value), t.number))  # type: ignore[arg-type]
        ranker = self.rankers(spec, bench) if spec.screen_factor > 1 else None
        batch = self.next_batch(live, parent, levels, spec, seq_len, ranker)
        stages = fidelities(spec.eval_tokens, seq_len)
        for i, pruned in enumerate(batch.configs[:open_slots]):
            enqueue_exact(study, space, levels.allocation(pruned), {
                "source": SOURCE, GENERATION_ATTR: batch.generation, STAGE_ATTR: batch.stage,
                FIDELITY_ATTR: stages[batch.stage], "parent": batch.parent.number,
                **({SCORE_ATTR: batch.scores[i]} if batch.drawn else {})})
        if batch.drawn:
            record_screening(study, batch, stages[0])
        study.set_user_attr(STUDY_ATTR, {
            "generation": batch.generation, "stage": batch.stage, "parent": batch.parent.number,
            "parent_value": batch.parent.value, "fidelities": stages, "screen_factor": spec.screen_factor,
            "survivors": survivors(self.offspring, len(stages)), **levels.describe()})
        return min(len(batch.configs), open_slots)

    def next_batch(self, live: list[FrozenTrial], parent: FrozenTrial, levels: Levels, spec: StudySpec,
                   seq_len: int, ranker: Ranker | None = None) -> Batch:
        """Replay the generations measured so far from ``parent`` on; the stage to measure next.

        ``ranker``: screens a new generation's offspring (None: measure the first ``offspring`` drawn).
        """
        stages = fidelities(spec.eval_tokens, seq_len)
        keep = survivors(self.offspring, len(stages))
        by_stage: dict[tuple[int, int], list[FrozenTrial]] = {}
        for trial in live:
            if trial.user_attrs.get("source") == SOURCE:
                key = (int(trial.user_attrs[GENERATION_ATTR]), int(trial.user_attrs[STAGE_ATTR]))
                by_stage.setdefault(key, []).append(trial)
        documents = [config_from_dict(t.user_attrs["config"]) for t in live if "config" in t.user_attrs]
        seen = {levels.read(doc).tobytes() for doc in documents if levels.on_grid(doc)}
        generation = 0
        while True:
            if (generation, 0) not in by_stage:
                return self.offspring_batch(live, parent, levels, spec, seq_len, generation, seen, ranker)
            finals: list[FrozenTrial] = []
            for stage in range(len(stages)):
                measured = by_stage.get((generation, stage))
                if measured is None:
                    ahead = self.ahead_of_parent(by_stage[(generation, stage - 1)], parent,
                                                 stages[stage - 1], seq_len)[: keep[stage]]
                    if not ahead:
                        break  # no offspring beat the parent: the generation ends here
                    configs = [levels.read(config_from_dict(t.user_attrs["config"])) for t in ahead]
                    return Batch(generation, stage, configs, parent)
                if stage == len(stages) - 1:
                    finals = [t for t in measured if t.state == TrialState.COMPLETE and t.value is not None]
            # Ties keep the parent (listed first; min keeps the first of equal keys).
            parent = min([parent, *finals], key=lambda t: float(t.value))  # type: ignore[arg-type]
            generation += 1

    @staticmethod
    def ahead_of_parent(trials: list[FrozenTrial], parent: FrozenTrial, tokens: int, seq_len: int) -> list[FrozenTrial]:
        """The offspring that beat the parent on the first ``tokens`` tokens, best first."""
        bar = _score_at(parent, tokens, seq_len)
        scored = sorted((_score_at(t, tokens, seq_len), t.number, t) for t in trials)
        return [t for score, _, t in scored if score < bar]

    def offspring_batch(self, live: list[FrozenTrial], parent: FrozenTrial, levels: Levels, spec: StudySpec,
                        seq_len: int, generation: int, seen: set[bytes], ranker: Ranker | None) -> Batch:
        """Stage 0 of ``generation``: the ranker's best ``offspring`` of ``screen_factor`` times as many
        candidates once it has ``min_pairs`` measured configs to learn from; else the first drawn."""
        drawn = self.offspring_of(parent, levels, spec.seed, generation, seen, self.offspring * spec.screen_factor)
        if ranker is None or len(drawn) <= self.offspring:
            return Batch(generation, 0, drawn[: self.offspring], parent)
        configs, values = measured_pairs(live, fidelities(spec.eval_tokens, seq_len)[0], seq_len)
        if len(values) < ranker.min_pairs:
            return Batch(generation, 0, drawn[: self.offspring], parent)
        started = time.perf_counter()
        ranker.observe(configs, values)
        scores = np.asarray(ranker.rank([levels.layer_configs(child) for child in drawn]), dtype=np.float64)
        best = np.argsort(scores, kind="stable")[: self.offspring]  # ties: the earlier drawn
        return Batch(generation, 0, [drawn[i] for i in best], parent, len(drawn), [float(scores[i]) for i in best],
                     time.perf_counter() - started)

    def offspring_of(self, parent: FrozenTrial, levels: Levels, seed: int, generation: int,
                     seen: set[bytes], count: int | None = None) -> list[np.ndarray]:
        """``count`` (default ``offspring``) distinct mutants of ``parent`` never measured before, drawn from
        (seed, generation); a larger ``count`` draws the same first ``offspring``, then more."""
        count = self.offspring if count is None else count
        rng = np.random.default_rng([seed, generation])
        base = levels.read(config_from_dict(parent.user_attrs["config"]))
        out: list[np.ndarray] = []
        for _ in range(50 * count):
            child = levels.mutate(base, rng)
            if child.tobytes() not in seen:
                seen.add(child.tobytes())
                out.append(child)
                if len(out) == count:
                    break
        return out


@dataclass(frozen=True)
class EvolveStrategy:
    """The evolution enqueues every trial; TPE proposes only if it waited too long for other workers."""

    def sampler(self, spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
        return tpe_sampler(spec, worker_index)

    def proposer(self) -> Evolution:
        return Evolution()

    def prepare(self, spec: StudySpec, bench: Workbench, seeds: Sequence[CompressionConfig],
                progress: StepProgress | None = None) -> None:
        """Build the level database around the seeds, for an operator that computes each (layer, setting)
        from the calibration data (SparseGPT, GPTQ: ``compress.operators.levelled``); nothing otherwise.

        Every layer at each of its settings within ``DATABASE_RADIUS`` levels of each seed on the grid
        (of the uniform allocation when none is), computed layer by layer into the model's shared cache
        (``compress.operators.layer_cache``: every study and worker on the machine reuses it, and a setup
        cut short resumes where it stopped), reported as the step ``level database`` in layers. The
        first generations then only load stored tensors.
        """
        space = bench.space(spec)
        levels = level_space(space, LEVELS)
        session = bench.session(spec.model_id)
        configs = ([c for c in seeds if levels.on_grid(c)]
                   or [uniform(session, spec.budget_ratio, spec.operators).config])
        if not any(levelled(cfg) for cfg in configs[0].layers.values()):
            return  # a score-based operator: nothing per setting to build
        vectors = distinct(v for c in configs for v in levels.around(levels.read(c), DATABASE_RADIUS))
        entries = [levels.layer_configs(v) for v in vectors]
        names = [layer.name for layer in space.layers]
        with session.reporting(progress):
            for done, name in enumerate(names):
                if progress:
                    progress(DATABASE_STEP, done, len(names))
                settings = {json.dumps(e[name].to_dict(), sort_keys=True): e[name] for e in entries if name in e}
                for cfg in settings.values():
                    session.warm(CompressionConfig(model_id=spec.model_id, layers={name: cfg}))
            if progress:
                progress(DATABASE_STEP, len(names), len(names))


STRATEGY = EvolveStrategy()
