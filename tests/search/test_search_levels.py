"""Evolve's level spaces: low rank and bit widths keep the exactly counted budget under every mutation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna.trial import FrozenTrial, TrialState

from common.errors import ConfigError
from compress.accounting import model_cost
from compress.baselines import uniform
from compress.budget import BUDGET_TOLERANCE
from compress.config import CompressionConfig, config_from_dict
from compress.layers import LinearLayer
from compress.leveldb import KeepGrid
from compress.registry import DENSE_BITS
from search.context import Workbench
from search.levels import BitsLevels, Levels, RankLevels, SparsityLevels, level_space
from search.runner import run_search
from search.space import SearchSpace, to_config
from search.spec import StudySpec
from search.strategies.evolve import SOURCE
from search.study import best_trial, load_study

BASE = dict(model_id="tiny-llama", eval_tokens=1024, holdout_tokens=128, sensitivity_tokens=64,
            baselines=["uniform"], strategy="evolve", prune=False)
LOWRANK = BASE | {"budget": 0.5, "operators": ["svd"]}
BITS = BASE | {"budget_bits": 3.5, "operators": ["gptq"]}
DRAWS = 400


def _start(bench: Workbench, spec: StudySpec) -> CompressionConfig:
    return uniform(bench.session(spec.model_id), spec.budget_ratio, spec.operators).config


def _seeded_space(fields: dict[str, Any]) -> tuple[SearchSpace, Levels, CompressionConfig]:
    """A study spec's search space, its level space, and the uniform allocation's config (the seed)."""
    bench = Workbench()
    spec = StudySpec(**fields)
    space = bench.space(spec)
    return space, level_space(space, 4), _start(bench, spec)


def _pairs(child: np.ndarray, parent: np.ndarray) -> tuple[int, int]:
    """Layers moved down and up."""
    return int((child < parent).sum()), int((child > parent).sum())


def test_rank_mutations_keep_the_kept_weights_exactly_within_the_rank_range() -> None:
    space, levels, seed = _seeded_space(LOWRANK)
    assert isinstance(levels, RankLevels)
    layers = list(space.layers)
    start = levels.read(seed)
    kept = model_cost(layers, dict(seed.layers)).params  # compress.accounting's count, not the level space's
    assert levels.cost(start) == kept
    full = np.array([min(layer.in_features, layer.out_features) for layer in layers])
    rng = np.random.default_rng(0)
    moved, changed = [], np.zeros(len(layers), dtype=bool)
    for _ in range(DRAWS):
        child = levels.mutate(start, rng)
        configs = levels.layer_configs(child)
        assert model_cost(layers, configs).params == kept
        assert levels.allocation(child).params_kept == kept
        assert np.all(child >= np.minimum(levels.lo, start)) and np.all(child <= levels.hi)
        assert np.all(levels.hi <= full) and np.all(levels.lo >= 1)
        # The config document reads back as the same ranks (dense = the break-even rank).
        assert np.array_equal(levels.read(to_config(space, levels.allocation(child), {"source": SOURCE})), child)
        for name, cfg in configs.items():
            assert cfg.lowrank is not None and cfg.lowrank.method == "svd"
            assert 1 <= cfg.lowrank.rank < full[[layer.name for layer in layers].index(name)]
        down, up = _pairs(child, start)
        assert 1 <= down == up <= 3
        moved.append(down)
        changed |= child != start
    assert set(moved) == {1, 2, 3}
    assert changed.mean() > 0.5  # the moves reach most layers, not a few


def _smollm2_layers() -> list[LinearLayer]:
    shapes = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576),
              "gate": (576, 1536), "up": (576, 1536), "down": (1536, 576)}
    return [LinearLayer(f"model.layers.{b}.{t}", b, t, i, o) for b in range(30) for t, (i, o) in shapes.items()]


def test_rank_exchanges_on_smollm2_shapes_trade_about_the_evopress_step() -> None:
    layers = _smollm2_layers()
    levels = RankLevels(layers, "svd-whitened", KeepGrid(0.8, 4).target_weights(layers))
    q, k, gate = 0, 1, 4
    trades = {(a, b): (int(levels.steps(a)[0][b]), int(levels.steps(a)[1][b]))
              for a, b in ((q, q + 7), (k, k + 7), (gate, gate + 7), (q, k), (q, gate), (k, gate))}
    assert trades == {(q, q + 7): (7, 7), (k, k + 7): (11, 11), (gate, gate + 7): (4, 4),
                      (q, k): (8, 12), (q, gate): (11, 6), (k, gate): (11, 4)}
    for (a, b), (down, up) in trades.items():
        assert down * levels.unit[a] == up * levels.unit[b]
    assert list(levels.hi[:7]) == [288, 144, 144, 288, 419, 419, 419]  # break-even: stored dense
    assert list(levels.lo[:7]) == [5, 2, 2, 5, 8, 8, 8]
    # A dense MLP layer (dense costs 1,920 weights less than 419 ranks) finds no exact partner and stays;
    # a dense q layer (288 ranks cost exactly its weights) moves like any other.
    start = np.floor(0.8 * levels.params / levels.unit).astype(np.int64)
    start[[gate, q]] = levels.hi[[gate, q]]
    rng = np.random.default_rng(1)
    q_moved = False
    for _ in range(DRAWS):
        child = levels.mutate(start, rng)
        assert levels.cost(child) == levels.cost(start)
        assert child[gate] == start[gate]
        q_moved |= bool(child[q] != start[q])
    assert q_moved


def test_bits_mutations_keep_the_stored_bits_exactly() -> None:
    space, levels, seed = _seeded_space(BITS)
    assert isinstance(levels, BitsLevels)
    layers = list(space.layers)
    assert levels.on_grid(seed)
    start = levels.read(seed)
    stored = 8 * model_cost(layers, dict(seed.layers)).bytes  # every scale, as compress.accounting counts
    assert levels.cost(start) == stored
    assert abs(stored / sum(layer.params for layer in layers) - 3.5) <= BUDGET_TOLERANCE * 3.5
    assert set(levels.widths(start)) == {3, 4}  # 3.5 bits is not one width: the seed mixes two
    rng = np.random.default_rng(0)
    moved = []
    for _ in range(DRAWS):
        child = levels.mutate(start, rng)
        configs = levels.layer_configs(child)
        assert 8 * model_cost(layers, configs).bytes == stored
        assert levels.allocation(child).bits == stored
        assert np.all((child >= 0) & (child <= levels.hi))
        assert set(np.abs(child - start)) <= {0, 1}  # one width at a time
        assert set(levels.widths(child)) <= {2, 3, 4, 8, DENSE_BITS}
        assert all(cfg.quant is not None and cfg.quant.method == "gptq" for cfg in configs.values())
        assert np.array_equal(levels.read(to_config(space, levels.allocation(child), {"source": SOURCE})), child)
        down, up = _pairs(child, start)
        assert 1 <= down == up <= 3
        moved.append(down)
    assert set(moved) == {1, 2, 3}


def test_bits_pairs_move_equal_bit_deltas_of_equal_sized_layers() -> None:
    layers = _smollm2_layers()
    levels = BitsLevels(layers, "gptq")
    start = np.full(len(layers), 1)  # 3 bits
    rng = np.random.default_rng(2)
    for _ in range(DRAWS):
        child = levels.mutate(start, rng)
        widths = levels.widths(child) - levels.widths(start)
        for size in {layer.params for layer in layers}:  # three sizes: q/o, k/v, the MLP's
            same = np.array([layer.params == size for layer in layers])
            assert widths[same].sum() == 0
        assert levels.cost(child) == levels.cost(start)


def test_the_registry_picks_by_family_and_refuses_the_rest() -> None:
    bench = Workbench()
    assert isinstance(level_space(bench.space(StudySpec(**LOWRANK | {"operators": ["wanda"]})), 4),  # type: ignore[arg-type]
                      SparsityLevels)
    for operators in (["nm-2:4"], ["wanda", "svd"]):
        with pytest.raises(ConfigError) as err:
            level_space(bench.space(StudySpec(**LOWRANK | {"operators": operators})), 4)  # type: ignore[arg-type]
        assert err.value.field == "strategy"
    for spec in (LOWRANK, BITS):
        with pytest.raises(ConfigError) as err:
            level_space(bench.space(StudySpec(**spec)), 4, screened=True)  # type: ignore[arg-type]
        assert err.value.field == "screen_factor"
    space = bench.space(StudySpec(**LOWRANK | {"operators": ["svd"]}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SparsityLevels.of(space, 4)


def _evolve(tmp_path: Path, name: str, spec: StudySpec) -> tuple[list[FrozenTrial], FrozenTrial]:
    """Run an evolve study; its trials and its best (checked: full fidelity, nothing failed)."""
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    run_search(spec, storage_url=url, study_name=name, bench=Workbench())
    study, _ = load_study(url, name)
    best = best_trial(study)
    trials = study.get_trials()
    assert best is not None and best.state == TrialState.COMPLETE
    assert best.user_attrs["n_tokens"] == max(t.user_attrs["n_tokens"] for t in trials)  # full fidelity
    assert [t.state for t in trials].count(TrialState.FAIL) == 0
    assert sum(t.user_attrs["source"] == SOURCE for t in trials) == len(trials) - 1  # all but the seed
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["n_tokens"] for t in complete} == {best.user_attrs["n_tokens"]}  # PRUNED below it
    return trials, best


@pytest.mark.slow
def test_an_evolve_study_in_low_rank_meets_the_budget(tmp_path: Path) -> None:
    spec = StudySpec(**LOWRANK | {"n_trials": 14})  # type: ignore[arg-type]
    trials, best = _evolve(tmp_path, "lowrank", spec)
    assert len({t.user_attrs["params_kept"] for t in trials}) == 1  # every offspring keeps the seed's weights
    assert abs(trials[0].user_attrs["keep_ratio"] - 0.5) <= BUDGET_TOLERANCE * 0.5
    config = config_from_dict(best.user_attrs["config"])
    assert {cfg.lowrank.method for cfg in config.layers.values() if cfg.lowrank} == {"svd"}
    assert model_cost(list(Workbench().space(spec).layers), dict(config.layers)).params == trials[0].user_attrs[
        "params_kept"]


@pytest.mark.slow
def test_an_evolve_study_at_a_bits_budget_meets_it(tmp_path: Path) -> None:
    spec = StudySpec(**BITS | {"n_trials": 14})  # type: ignore[arg-type]
    trials, best = _evolve(tmp_path, "bits", spec)
    assert len({t.user_attrs["bytes"] for t in trials}) == 1  # the stored bits of the seed, exactly
    assert abs(trials[0].user_attrs["bits_per_weight"] - 3.5) <= BUDGET_TOLERANCE * 3.5
    config = config_from_dict(best.user_attrs["config"])
    assert {cfg.quant.method for cfg in config.layers.values() if cfg.quant} == {"gptq"}
    assert len({cfg.quant.bits for cfg in config.layers.values() if cfg.quant}) > 1
    layers = list(Workbench().space(spec).layers)
    assert 8 * model_cost(layers, dict(config.layers)).bytes == 8 * trials[0].user_attrs["bytes"]


def test_around_holds_each_layers_settings_within_the_radius_clipped_to_its_range() -> None:
    space, levels, seed = _seeded_space(BASE | {"budget": 0.5, "operators": ["sparsegpt"]})
    assert isinstance(levels, SparsityLevels)
    centre = levels.read(seed)
    vectors = levels.around(centre, 2)
    assert len({v.tobytes() for v in vectors}) == len(vectors)
    for i in range(len(space.layers)):
        expected = {int(np.clip(centre[i] + k * levels.per_row[i], 0, levels.max_pruned[i])) for k in range(-2, 3)}
        assert {int(v[i]) for v in vectors} == expected
    assert len(expected) > 1 and any(np.array_equal(v, centre) for v in vectors)

    _, bits, bits_seed = _seeded_space(BITS)
    assert isinstance(bits, BitsLevels)
    start = bits.read(bits_seed)
    near = bits.around(start, 1)
    for i in range(len(start)):  # one width either side, never past 2 bits or dense
        assert {int(v[i]) for v in near} == {int(x) for x in np.clip(start[i] + np.arange(-1, 2), 0, bits.hi[i])}
