"""The evolve strategy on the tiny model: level swaps keep the budget, stages, determinism, the winner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from optuna.trial import FrozenTrial, TrialState

from common.errors import ConfigError
from compress.baselines import uniform
from search.context import Workbench
from search.measure_trial import FIDELITY_ATTR
from search.runner import run_search
from search.spec import StudySpec
from search.strategies.evolve import PARENT_SOURCE, SOURCE, LevelSpace, fidelities, survivors
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
