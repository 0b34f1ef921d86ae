"""The evolve strategy on the tiny model: level swaps keep the budget, stages, determinism, the winner."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from compress.baselines import uniform
from compress.config import LayerConfig, config_from_dict
from predictor.rank import ConfigRanker
from search.context import Workbench
from search.levels import SparsityLevels
from search.measure_trial import FIDELITY_ATTR
from search.runner import run_search
from search.space import to_config
from search.spec import StudySpec
from search.strategies.evolve import (
    DATABASE_STEP,
    PARENT_SOURCE,
    SCORE_ATTR,
    SOURCE,
    Evolution,
    SessionRankers,
    fidelities,
    survivors,
)
from search.study import best_trial, load_study

SPEC = dict(model_id="tiny-llama", budget=0.5, operators=["wanda"], eval_tokens=1024, holdout_tokens=128,
            sensitivity_tokens=64, baselines=["uniform"], strategy="evolve", prune=False)


def test_schedule_is_prefixes_of_the_evaluation_tokens_four_times_apart() -> None:
    assert fidelities(2048, 512) == [512, 2048]
    assert fidelities(8192, 512) == [512, 2048, 8192]
    assert fidelities(65536, 512) == [4096, 16384, 65536]
    assert fidelities(1024, 512) == [512, 1024]
    assert fidelities(512, 512) == [512]
    assert survivors(8, 2) == [8, 2]
    assert survivors(64, 3) == [64, 16, 4]


def test_level_swaps_keep_the_kept_weights_exactly() -> None:
    bench = Workbench()
    spec = StudySpec(**SPEC)  # type: ignore[arg-type]
    space = bench.space(spec)
    levels = SparsityLevels.of(space, levels=4)
    start = levels.read(uniform(bench.session(spec.model_id), spec.budget_ratio, spec.operators).config)
    rng = np.random.default_rng(0)
    moved = []
    for _ in range(200):
        child = levels.mutate(start, rng)
        assert levels.kept(child) == levels.kept(start)
        delta = (child - start) // levels.per_row
        assert np.all((child - start) % levels.per_row == 0)  # whole levels only
        assert set(np.unique(delta)) <= {-1, 0, 1}
        assert 1 <= (delta == 1).sum() == (delta == -1).sum() <= 3
        assert levels.allocation(child).params_kept == levels.kept(start)
        moved.append(int((delta == 1).sum()))
    assert set(moved) == {1, 2, 3}
    assert moved.count(1) > moved.count(3)  # min of two draws favours small moves


def _study(tmp_path: Path, name: str, bench: Workbench | None = None,
           **overrides: object) -> tuple[list[FrozenTrial], dict[str, object]]:
    """Run a study; its trials and its summary."""
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    spec = StudySpec(**SPEC | overrides)  # type: ignore[arg-type]
    summary = run_search(spec, storage_url=url, study_name=name, bench=bench or Workbench())
    study, _ = load_study(url, name)
    best = best_trial(study)
    assert best is not None and best.user_attrs["n_tokens"] == max(t.user_attrs["n_tokens"] for t in study.get_trials())
    return study.get_trials(), summary


def _run(tmp_path: Path, name: str, **overrides: object) -> list[FrozenTrial]:
    return _study(tmp_path, name, None, **overrides)[0]


@pytest.mark.slow
def test_a_study_evolves_in_stages_deterministically(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", n_trials=14)
    again = _run(tmp_path, "b", n_trials=14)
    assert [t.state for t in first].count(TrialState.FAIL) == 0
    assert len([t for t in first if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 14
    kept = {t.user_attrs["params_kept"] for t in first}
    assert len(kept) == 1  # every offspring keeps exactly the seed's weights
    offspring = [t for t in first if t.user_attrs["source"] == SOURCE]
    assert [t.user_attrs["stage"] for t in offspring[:8]] == [0] * 8
    for trial in offspring:  # stage 0 on 512 tokens (one chunk), PRUNED; the last stage on all, COMPLETE
        cheap = trial.user_attrs["stage"] == 0
        assert trial.user_attrs[FIDELITY_ATTR] == (512 if cheap else 1024)
        assert trial.user_attrs["n_tokens"] == (511 if cheap else 1022)
        assert trial.state == (TrialState.PRUNED if cheap else TrialState.COMPLETE)
    # The same spec measures the same configs in the same order, with the same values.
    assert [(t.user_attrs["config"]["layers"], t.user_attrs.get("stage"), t.value) for t in first] == [
        (t.user_attrs["config"]["layers"], t.user_attrs.get("stage"), t.value) for t in again]
    # Another seed draws other offspring.
    other = _run(tmp_path, "c", n_trials=4, seed=1)
    assert other[1].user_attrs["config"]["layers"] != first[1].user_attrs["config"]["layers"]


@pytest.mark.slow
def test_without_baselines_the_uniform_allocation_is_the_first_parent(tmp_path: Path) -> None:
    trials = _run(tmp_path, "nobase", n_trials=3, baselines=[])
    assert trials[0].user_attrs["source"] == PARENT_SOURCE
    assert trials[0].state == TrialState.COMPLETE
    assert [t.user_attrs["parent"] for t in trials[1:]] == [0, 0]


def _trial(number: int, pruned: np.ndarray, levels: SparsityLevels, space: object, chunks: list[float],
           state: TrialState, **attrs: object) -> FrozenTrial:
    config = to_config(space, levels.allocation(pruned), {"source": SOURCE})  # type: ignore[arg-type]
    trial = create_trial(state=state, value=chunks[-1], intermediate_values=dict(enumerate(chunks)),
                         user_attrs={"config": config.to_dict(), **attrs})
    trial.number = number
    return trial


def test_offspring_go_on_only_ahead_of_the_parent_and_the_best_becomes_the_next_parent() -> None:
    bench = Workbench()
    spec = StudySpec(**SPEC | {"n_trials": 100})  # type: ignore[arg-type]
    space = bench.space(spec)
    levels = SparsityLevels.of(space, levels=4)
    start = levels.read(uniform(bench.session(spec.model_id), spec.budget_ratio, spec.operators).config)
    parent = _trial(0, start, levels, space, [1.0, 2.0], TrialState.COMPLETE, source="baseline:uniform")
    evolution = Evolution(offspring=4)

    first = evolution.next_batch([parent], parent, levels, spec, seq_len=512)
    assert (first.generation, first.stage, first.parent.number, len(first.configs)) == (0, 0, 0, 4)
    assert all(levels.kept(c) == levels.kept(start) for c in first.configs)

    def stage0(values: list[float]) -> list[FrozenTrial]:
        return [_trial(1 + i, c, levels, space, [v], TrialState.PRUNED, source=SOURCE, generation=0, stage=0)
                for i, (c, v) in enumerate(zip(first.configs, values, strict=True))]

    # Two offspring beat the parent's 1.0 on the first chunk; survivors(4, 2) = [4, 1]: only the best goes on.
    cheap = stage0([0.9, 1.1, 0.8, 1.0])
    second = evolution.next_batch([parent, *cheap], parent, levels, spec, seq_len=512)
    assert (second.generation, second.stage) == (0, 1)
    assert [c.tobytes() for c in second.configs] == [first.configs[2].tobytes()]

    # Better on all tokens: the next generation mutates it; worse: the parent stays.
    for full, next_parent in ((1.9, 5), (2.1, 0)):
        final = _trial(5, first.configs[2], levels, space, [0.8, full], TrialState.COMPLETE,
                       source=SOURCE, generation=0, stage=1)
        third = evolution.next_batch([parent, *cheap, final], parent, levels, spec, seq_len=512)
        assert (third.generation, third.stage, third.parent.number) == (1, 0, next_parent)

    # No offspring ahead of the parent: the generation ends after its cheapest stage.
    behind = stage0([1.2, 1.0, 1.3, 1.1])
    fourth = evolution.next_batch([parent, *behind], parent, levels, spec, seq_len=512)
    assert (fourth.generation, fourth.stage, fourth.parent.number) == (1, 0, 0)


def _stage(trials: list[FrozenTrial], generation: int, stage: int) -> list[FrozenTrial]:
    return [t for t in trials if t.user_attrs.get("source") == SOURCE
            and (t.user_attrs["generation"], t.user_attrs["stage"]) == (generation, stage)]


@dataclass
class StubRanker:
    """Scores a config by its depth-weighted sparsity (an order unrelated to the draw); keeps what it was fitted on."""

    min_pairs: int = 3
    observed: list[float] = field(default_factory=list)

    def observe(self, configs: Sequence[Mapping[str, LayerConfig]], values: Sequence[float]) -> None:
        self.observed += list(values)

    def rank(self, configs: Sequence[Mapping[str, LayerConfig]]) -> np.ndarray:
        return np.array([sum(i * cfg.sparsity.ratio for i, (_, cfg) in enumerate(sorted(layers.items()))
                             if cfg.sparsity is not None) for layers in configs])


def test_screening_measures_the_rankers_best_of_more_candidates_once_it_can_learn() -> None:
    bench = Workbench()
    spec = StudySpec(**SPEC | {"n_trials": 100, "screen_factor": 4})  # type: ignore[arg-type]
    space = bench.space(spec)
    levels = SparsityLevels.of(space, levels=4)
    start = levels.read(uniform(bench.session(spec.model_id), spec.budget_ratio, spec.operators).config)
    parent = _trial(0, start, levels, space, [1.0, 2.0], TrialState.COMPLETE, source="baseline:uniform")
    evolution, ranker = Evolution(offspring=4), StubRanker()

    # One measured config (< min_pairs): the first four drawn, as without screening.
    first = evolution.next_batch([parent], parent, levels, spec, seq_len=512, ranker=ranker)
    unscreened = evolution.next_batch([parent], parent, levels, spec.model_copy(update={"screen_factor": 1}), 512)
    assert [c.tobytes() for c in first.configs] == [c.tobytes() for c in unscreened.configs]
    assert (first.drawn, first.screened_out, ranker.observed) == (0, 0, [])

    # Generation 0 trails the parent on 512 tokens: generation 1 is drawn with 5 measured configs to learn from.
    cheap = [_trial(1 + i, c, levels, space, [v], TrialState.PRUNED, source=SOURCE, generation=0, stage=0)
             for i, (c, v) in enumerate(zip(first.configs, [1.2, 1.1, 1.3, 1.4], strict=True))]
    batch = evolution.next_batch([parent, *cheap], parent, levels, spec, seq_len=512, ranker=ranker)
    assert (batch.generation, batch.stage, len(batch.configs), batch.drawn, batch.screened_out) == (1, 0, 4, 16, 12)
    assert ranker.observed == [1.0, 1.2, 1.1, 1.3, 1.4]  # each config's score on the cheapest fidelity

    seen = {levels.read(config_from_dict(t.user_attrs["config"])).tobytes() for t in [parent, *cheap]}
    drawn = evolution.offspring_of(parent, levels, spec.seed, 1, seen, count=16)
    scores = ranker.rank([levels.layer_configs(c) for c in drawn])
    best = [drawn[i].tobytes() for i in np.argsort(scores, kind="stable")[:4]]
    assert best != [c.tobytes() for c in drawn[:4]]  # screening changes what is measured
    assert [c.tobytes() for c in batch.configs] == best
    assert batch.scores == sorted(batch.scores) == pytest.approx(np.sort(scores)[:4].tolist())
    assert all(levels.kept(c) == levels.kept(start) for c in drawn)


@pytest.mark.slow
def test_a_screened_study_measures_the_config_rankers_best_and_counts_what_it_saved(tmp_path: Path) -> None:
    bench = Workbench()
    trials, summary = _study(tmp_path, "screened", bench, n_trials=19, screen_factor=4)
    again = _run(tmp_path, "again", n_trials=19, screen_factor=4)
    unscreened = _run(tmp_path, "unscreened", n_trials=9, screen_factor=1)

    assert [t.state for t in trials].count(TrialState.FAIL) == 0
    assert len({t.user_attrs["params_kept"] for t in trials}) == 1  # budget-exact throughout
    generation1 = _stage(trials, 1, 0)
    assert len(_stage(trials, 0, 0)) == len(generation1) == 8  # one queued per measured offspring
    # Generation 0 had one measured config (< ConfigRanker's 8): drawn as without screening.
    assert [t.user_attrs["config"]["layers"] for t in _stage(trials, 0, 0)] == [
        t.user_attrs["config"]["layers"] for t in _stage(unscreened, 0, 0)]
    assert "screening" not in load_study(f"sqlite:///{tmp_path / 'unscreened.db'}", "unscreened")[0].user_attrs
    screening = dict(summary["screening"])  # type: ignore[call-overload]
    generations, rank_s = screening.pop("generations"), screening.pop("rank_s")
    assert screening == {"screened_out": 24, "fidelity_tokens": 512, "saved_tokens": 24 * 512}
    assert generations == {"1": {"drawn": 32, "queued": 8, "screened_out": 24, "rank_s": rank_s}} and rank_s > 0

    # Generation 1 is ConfigRanker's best 8 of 32, fitted on every config measured before it (first chunk).
    before = [t for t in trials if t.number < generation1[0].number]
    pairs: dict[str, FrozenTrial] = {}
    for trial in before:  # one pair per config, in trial order
        pairs.setdefault(json.dumps(trial.user_attrs["config"]["layers"], sort_keys=True), trial)
    spec = StudySpec(**SPEC | {"n_trials": 19})  # type: ignore[arg-type]
    ranker = ConfigRanker.for_session(bench.session(spec.model_id), spec.budget_ratio, spec.operators)
    ranker.observe([config_from_dict(t.user_attrs["config"]).layers for t in pairs.values()],
                   [t.intermediate_values[0] for t in pairs.values()])
    levels = SparsityLevels.of(bench.space(spec), levels=4)
    parent = trials[generation1[0].user_attrs["parent"]]
    seen = {levels.read(config_from_dict(t.user_attrs["config"])).tobytes() for t in before}
    drawn = Evolution().offspring_of(parent, levels, spec.seed, 1, seen, count=32)
    scores = ranker.rank([levels.layer_configs(c) for c in drawn])
    measured = [levels.read(config_from_dict(t.user_attrs["config"])).tobytes() for t in generation1]
    assert measured == [drawn[i].tobytes() for i in np.argsort(scores, kind="stable")[:8]]
    assert [t.user_attrs[SCORE_ATTR] for t in generation1] == pytest.approx(np.sort(scores)[:8].tolist())

    # The same spec measures the same trials.
    assert [(t.user_attrs["config"]["layers"], t.user_attrs.get("stage"), t.value) for t in trials] == [
        (t.user_attrs["config"]["layers"], t.user_attrs.get("stage"), t.value) for t in again]


def test_session_rankers_build_the_features_once_and_a_fresh_ranker_each_time() -> None:
    bench, rankers = Workbench(), SessionRankers()
    spec = StudySpec(**SPEC)  # type: ignore[arg-type]
    first, second = rankers(spec, bench), rankers(spec, bench)
    assert first is not second and first.builder is second.builder
    assert (first.n_observed, first.min_pairs, first.seed) == (0, 8, spec.seed)


def _sparsegpt_entries(directory: Path) -> dict[str, set[int]]:
    """The level-database entries on disk: pruned weights per row, by layer (``<layer>-p<n>-d<damping>``)."""
    out: dict[str, set[int]] = {}
    for path in directory.glob("*.safetensors"):
        layer, _, rest = path.stem.rpartition("-p")
        out.setdefault(layer, set()).add(int(rest.split("-d")[0]))
    return out


def test_the_setup_builds_the_level_database_around_the_seeds_and_trials_only_load_it(tmp_path: Path) -> None:
    """SparseGPT under evolve: every layer at each setting within two levels of the seed is computed in the
    setup, reported layer by layer; the first generation's trials then compute nothing new."""
    bench = Workbench()
    spec = StudySpec(**SPEC | {"operators": ["sparsegpt"], "n_trials": 6})  # type: ignore[arg-type]
    directory = bench.session(spec.model_id).cache_dir / "sparsegpt"
    reports: list[tuple[str, int, int]] = []
    built: list[dict[str, set[int]]] = []

    def on_setup(step: str, done: int, total: int) -> None:
        reports.append((step, done, total))
        if step == DATABASE_STEP and done == total:
            built.append(_sparsegpt_entries(directory))

    run_search(spec, storage_url=f"sqlite:///{tmp_path / 's.db'}", study_name="db", bench=bench, on_setup=on_setup)
    layers = list(bench.space(spec).layers)
    assert [(d, t) for s, d, t in reports if s == DATABASE_STEP] == [(d, len(layers)) for d in range(len(layers) + 1)]
    levels = SparsityLevels.of(bench.space(spec), levels=4)
    centre = levels.read(uniform(bench.session(spec.model_id), spec.budget_ratio, spec.operators).config)
    assert built[0] == {layer.name: {int(centre[i] + k * levels.per_row[i]) for k in range(-2, 3)}
                        for i, layer in enumerate(layers)}
    study, _ = load_study(f"sqlite:///{tmp_path / 's.db'}", "db")
    assert [t.user_attrs["source"] for t in study.get_trials()] == ["baseline:uniform"] + [SOURCE] * 5
    assert _sparsegpt_entries(directory) == built[0]  # the offspring (one level from the seed) only loaded


def test_a_score_based_operator_has_no_level_database_to_build(tmp_path: Path) -> None:
    reports: list[str] = []
    spec = StudySpec(**SPEC | {"n_trials": 1})  # type: ignore[arg-type]
    run_search(spec, storage_url=f"sqlite:///{tmp_path / 's.db'}", study_name="w", bench=Workbench(),
               on_setup=lambda step, done, total: reports.append(step))
    assert "baseline uniform" in reports and DATABASE_STEP not in reports
