"""The evolve strategy on the tiny model: level swaps keep the budget, stages, determinism, the winner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from common.errors import ConfigError
from compress.baselines import uniform
from search.context import Workbench
from search.measure_trial import FIDELITY_ATTR
from search.runner import run_search
from search.space import to_config
from search.spec import StudySpec
from search.strategies.evolve import PARENT_SOURCE, SOURCE, Evolution, LevelSpace, fidelities, survivors
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
    levels = LevelSpace.of(space, levels=4)
    start = levels.read(uniform(bench.session(spec.model_id), spec.budget, spec.operators).config)
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


def test_low_rank_is_refused() -> None:
    space = Workbench().space(StudySpec(**SPEC | {"operators": ["svd"]}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LevelSpace.of(space, levels=4)


def _run(tmp_path: Path, name: str, **overrides: object) -> list[FrozenTrial]:
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    spec = StudySpec(**SPEC | overrides)  # type: ignore[arg-type]
    run_search(spec, storage_url=url, study_name=name, bench=Workbench())
    study, _ = load_study(url, name)
    best = best_trial(study)
    assert best is not None and best.user_attrs["n_tokens"] == max(t.user_attrs["n_tokens"] for t in study.get_trials())
    return study.get_trials()


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


def _trial(number: int, pruned: np.ndarray, levels: LevelSpace, space: object, chunks: list[float],
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
    levels = LevelSpace.of(space, levels=4)
    start = levels.read(uniform(bench.session(spec.model_id), spec.budget, spec.operators).config)
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
