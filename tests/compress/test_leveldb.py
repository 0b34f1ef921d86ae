"""The level database on tiny-llama: bit-identical to the operator, resumable, refuses foreign data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from common.errors import ConfigError
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, SparsitySpec
from compress.leveldb import (
    BitsGrid,
    CorruptLevelDatabaseError,
    KeepGrid,
    LevelDatabase,
    LevelDatabaseError,
    narrowest_exact,
)
from compress.operators import gptq as gptq_operator
from compress.operators import sparsegpt as sparsegpt_operator
from compress.ops import gptq, obs, pruned_per_row, sparsegpt
from compress.session import ModelSession


@pytest.fixture
def session(tmp_path: Path) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512)


GRID = KeepGrid(keep=0.5, levels=1)


def test_applied_from_the_database_is_bit_identical_to_the_operator(session: ModelSession) -> None:
    db = LevelDatabase.build(session, "sparsegpt", GRID)
    names = [layer.name for layer in session.layers]
    levels = {name: (i % 3) - 1 for i, name in enumerate(names)}
    seconds = db.apply(session, levels)
    assert seconds >= 0
    stats = session.stats()
    for name, level in levels.items():
        layer = session.by_name[name]
        sparsity = db.manifest["layers"][name]["levels"][str(level)]["sparsity"]
        expected = sparsegpt(session.dense_weight(name), stats.gram(name), sparsity=sparsity,
                             percdamp=sparsegpt_operator.DAMPENING)
        assert torch.equal(session.modules[name].weight, expected), name
        zeros = (session.modules[name].weight == 0).sum(dim=1)
        step = GRID.resolved_step(session.layers) // layer.out_features
        assert (zeros == pruned_per_row(layer.in_features, 0.5) - level * step).all()
    session.restore()
    assert all(torch.equal(session.modules[n].weight, session.dense_weight(n)) for n in names)


def test_levels_are_budget_neutral_swaps(session: ModelSession) -> None:
    db = LevelDatabase.build(session, "sparsegpt", GRID)
    a, b = session.layers[0], session.layers[-1]
    kept = {}
    for levels in ({a.name: 0, b.name: 0}, {a.name: 1, b.name: -1}, {a.name: -1, b.name: 1}):
        kept[str(levels)] = sum(int((db.weight(n, lv) != 0).sum()) for n, lv in levels.items())
    assert len(set(kept.values())) == 1


def test_gptq_levels_decode_to_the_operator_result(session: ModelSession) -> None:
    db = LevelDatabase.build(session, "gptq", BitsGrid(bits=(3, 4), group_size=32))
    name = session.layers[1].name
    expected = gptq(session.dense_weight(name), session.stats().gram(name), bits=3, group_size=32,
                    percdamp=gptq_operator.DAMPENING).weight
    assert torch.equal(db.weight(name, 3), expected)
    assert db.levels(name) == [3, 4]
    with pytest.raises(ConfigError, match="level 8 is not in the database grid"):
        db.weight(name, 8)


@pytest.mark.parametrize("low_memory", [False, True])  # Grams kept in memory, or read afresh from disk
def test_wide_layers_factored_in_place_match_the_operator_and_spare_the_sessions_grams(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low_memory: bool) -> None:
    monkeypatch.setattr(obs, "FLOAT64_MAX_INPUTS", 0)  # every layer counts as wide: float32, H in the Gram's memory
    session = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512, low_memory=low_memory)
    stats = session.stats()
    before = {layer.name: stats.gram(layer.name).clone() for layer in session.layers}
    db = LevelDatabase.build(session, "sparsegpt", GRID)
    for layer in session.layers:
        assert torch.equal(stats.gram(layer.name), before[layer.name]), layer.name
        for level, params in db.manifest["layers"][layer.name]["levels"].items():
            expected = sparsegpt(session.dense_weight(layer.name), before[layer.name], sparsity=params["sparsity"],
                                 percdamp=sparsegpt_operator.DAMPENING)
            assert torch.equal(db.weight(layer.name, int(level)), expected), (layer.name, level)
    quantized = LevelDatabase.build(session, "gptq", BitsGrid(bits=(4,), group_size=32, act_order=True))
    name = session.layers[-1].name
    assert torch.equal(quantized.weight(name, 4), gptq(session.dense_weight(name), before[name], bits=4, group_size=32,
                                                       act_order=True, percdamp=gptq_operator.DAMPENING).weight)
    assert torch.equal(stats.gram(name), before[name])


def test_a_layer_whose_hessian_fails_in_the_grams_memory_is_retried_from_a_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(obs, "FLOAT64_MAX_INPUTS", 0)  # float32 everywhere: H factored in the Gram's memory
    session = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=256)
    gram = session.stats().gram
    real, calls = torch.linalg.cholesky_ex, [0]

    def first_fails(a: torch.Tensor, *, upper: bool = False, out: Any = None) -> Any:
        calls[0] += 1
        if calls[0] == 1:  # the first layer's first try
            out[1].fill_(1)
            return out
        return real(a, upper=upper, out=out)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", first_fails)
    db = LevelDatabase.build(session, "sparsegpt", KeepGrid(keep=0.5, levels=0))
    monkeypatch.setattr(torch.linalg, "cholesky_ex", real)
    assert calls[0] > 1 and db.built_layers == [layer.name for layer in session.layers]
    first = session.layers[0].name
    expected = sparsegpt(session.dense_weight(first), gram(first), sparsity=0.5, percdamp=sparsegpt_operator.DAMPENING)
    assert torch.equal(db.weight(first, 0), expected)  # the retry, from a copy, at the first damping


def test_a_bfloat16_models_levels_equal_the_operator_on_its_float32_weight(tmp_path: Path) -> None:
    session = ModelSession(load_model("tiny-llama", dtype="bfloat16"), cache_dir=tmp_path, calibration_tokens=256)
    db = LevelDatabase.build(session, "sparsegpt", KeepGrid(keep=0.5, levels=0))
    gram = session.stats().gram
    for layer in session.layers[:7]:
        sparsity = db.manifest["layers"][layer.name]["levels"]["0"]["sparsity"]
        expected = sparsegpt(session.dense_weight(layer.name), gram(layer.name), sparsity=sparsity,
                             percdamp=sparsegpt_operator.DAMPENING)
        assert torch.equal(db.weight(layer.name, 0), expected), layer.name


def test_a_killed_build_resumes_without_redoing_finished_layers(session: ModelSession) -> None:
    class Killed(Exception):
        pass

    def kill_after_three(done: int, total: int, name: str) -> None:
        if done == 3:
            raise Killed

    with pytest.raises(Killed):
        LevelDatabase.build(session, "sparsegpt", GRID, progress=kill_after_three)
    seen: list[int] = []
    db = LevelDatabase.build(session, "sparsegpt", GRID, progress=lambda done, total, name: seen.append(done))
    total = len(session.layers)
    assert len(db.built_layers) == total - 3
    assert db.built_layers == [layer.name for layer in session.layers[3:]]
    assert seen == list(range(1, total + 1))
    again = LevelDatabase.build(session, "sparsegpt", GRID)
    assert again.built_layers == []
    assert again.verify() == []


def test_another_calibration_set_or_model_is_refused(session: ModelSession, tmp_path: Path) -> None:
    directory = tmp_path / "db"
    LevelDatabase.build(session, "sparsegpt", GRID, directory=directory)
    other = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path / "other", calibration_tokens=256)
    with pytest.raises(LevelDatabaseError, match="calibration"):
        LevelDatabase.open(directory, other)
    with pytest.raises(LevelDatabaseError, match="calibration"):
        LevelDatabase.build(other, "sparsegpt", GRID, directory=directory)
    bert = ModelSession(load_model("tiny-bert"), cache_dir=tmp_path / "bert", calibration_tokens=256)
    with pytest.raises(LevelDatabaseError, match="model"):
        LevelDatabase.open(directory, bert)
    db = LevelDatabase.open(directory, session)
    with pytest.raises(LevelDatabaseError, match="calibration"):
        db.apply(other, {session.layers[0].name: 0})


def test_a_corrupt_file_is_a_clear_error_and_is_rebuilt(session: ModelSession) -> None:
    db = LevelDatabase.build(session, "sparsegpt", GRID)
    name = session.layers[2].name
    expected = db.weight(name, 1)
    path = db.directory / f"{name}.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    fresh = LevelDatabase.open(db.directory, session)
    with pytest.raises(CorruptLevelDatabaseError, match=r"corrupt.*rebuilds it"):
        fresh.weight(name, 1)
    assert fresh.verify() == [name]
    rebuilt = LevelDatabase.build(session, "sparsegpt", GRID)
    assert rebuilt.built_layers == [name]
    assert torch.equal(rebuilt.weight(name, 1), expected)
    # Same size, flipped bytes: safetensors still opens it; the checksum catches it.
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])
    path.write_bytes(bytes(data))
    assert LevelDatabase.build(session, "sparsegpt", GRID).built_layers == [name]


def test_a_grid_that_does_not_fit_a_layer_is_refused(session: ModelSession) -> None:
    rows = {layer.out_features for layer in session.layers}
    with pytest.raises(ConfigError, match="whole number of weights per row"):
        LevelDatabase.build(session, "sparsegpt", KeepGrid(keep=0.5, step=max(rows) + 1))
    with pytest.raises(ConfigError, match="does not divide"):
        LevelDatabase.build(session, "gptq", BitsGrid(bits=(4,), group_size=48))
    with pytest.raises(ConfigError, match="operator"):
        LevelDatabase.build(session, "wanda", GRID)
    with pytest.raises(ConfigError, match="keep"):
        KeepGrid(keep=1.5)


def test_sixteen_bits_only_where_exact() -> None:
    exact = torch.tensor([1.0, 0.5, -2.0, 0.0])
    assert narrowest_exact(exact).dtype == torch.bfloat16
    assert narrowest_exact(torch.tensor([1.0 + 2**-10])).dtype == torch.float16
    assert narrowest_exact(torch.tensor([1.0 + 2**-20])).dtype == torch.float32
    assert narrowest_exact(torch.tensor([3], dtype=torch.uint8)).dtype == torch.uint8


def test_applying_reads_only_the_layers_whose_level_changed(session: ModelSession, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    db = LevelDatabase.build(session, "sparsegpt", GRID)
    names = [layer.name for layer in session.layers]
    read: list[str] = []
    stored_weight = db._stored_weight

    def counting(name: str, level: int) -> torch.Tensor:
        read.append(name)
        return stored_weight(name, level)

    monkeypatch.setattr(db, "_stored_weight", counting)
    levels = dict.fromkeys(names, 0)
    db.apply(session, levels)
    assert sorted(read) == sorted(names)
    read.clear()
    swapped = {**levels, names[0]: 1, names[-1]: -1}
    db.apply(session, swapped)
    assert sorted(read) == sorted([names[0], names[-1]])
    for name, level in swapped.items():
        assert torch.equal(session.modules[name].weight, db.weight(name, level)), name
    # Another writer's config on a layer: the next database apply writes that layer again.
    read.clear()
    session.apply(CompressionConfig("tiny-llama", {names[2]: LayerConfig(sparsity=SparsitySpec(0.5, "wanda"))}))
    db.apply(session, swapped)
    assert sorted(read) == sorted(names)  # apply() restored every other layer to dense
    assert torch.equal(session.modules[names[2]].weight, db.weight(names[2], 0))
