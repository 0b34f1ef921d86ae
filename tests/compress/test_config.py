from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError
from compress.config import (
    SCHEMA_V1,
    CompressionConfig,
    LayerConfig,
    LowRankSpec,
    QuantSpec,
    SparsitySpec,
    config_from_dict,
    load_config,
)


def _doc(layers: dict) -> dict:  # type: ignore[type-arg]
    return {"schema": SCHEMA_V1, "model_id": "tiny-llama", "layers": layers}


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    config = CompressionConfig(
        "tiny-llama",
        {
            "model.layers.0.mlp.down_proj": LayerConfig(
                lowrank=LowRankSpec(8, "svd"),
                sparsity=SparsitySpec(0.5, "magnitude", "2:4"),
                quant=QuantSpec(4, 32, "1:8"),
            ),
            "model.layers.1.self_attn.q_proj": LayerConfig(sparsity=SparsitySpec(0.3)),
        },
        meta={"budget": 0.5},
    )
    path = tmp_path / "c.json"
    config.save(path)
    assert load_config(path) == config
    assert json.loads(path.read_text())["schema"] == SCHEMA_V1


def test_no_layers_means_dense() -> None:
    config = config_from_dict(_doc({}))
    assert config.layers == {}
    assert config_from_dict(_doc({"model.layers.0.mlp.up_proj": {}})).layers == {}


@pytest.mark.parametrize(
    ("layers", "field"),
    [
        ({"a": {"sparsity": {"ratio": 1.0}}}, "layers.a.sparsity.ratio"),
        ({"a": {"sparsity": {"ratio": -0.1}}}, "layers.a.sparsity.ratio"),
        ({"a": {"sparsity": {"ratio": "half"}}}, "layers.a.sparsity.ratio"),
        ({"a": {"sparsity": {"ratio": 0.5, "score": "random"}}}, "layers.a.sparsity.score"),
        ({"a": {"sparsity": {"ratio": 0.5, "pattern": "4:2"}}}, "layers.a.sparsity.pattern"),
        ({"a": {"sparsity": {"ratio": 0.3, "pattern": "2:4"}}}, "layers.a.sparsity.ratio"),
        ({"a": {"lowrank": {"rank": 0}}}, "layers.a.lowrank.rank"),
        ({"a": {"lowrank": {"rank": 4, "method": "qr"}}}, "layers.a.lowrank.method"),
        ({"a": {"quant": {"bits": 3}}}, "layers.a.quant.bits"),
        ({"a": {"quant": {"bits": 8, "group_size": 0}}}, "layers.a.quant.group_size"),
        ({"a": {"quant": {"bits": 8, "outliers": "x"}}}, "layers.a.quant.outliers"),
        ({"a": {"prune": {}}}, "layers.a.prune"),
        ({"a": {"sparsity": {"ratio": 0.5, "extra": 1}}}, "layers.a.sparsity.extra"),
        ({"a": []}, "layers.a"),
    ],
)
def test_bad_fields_are_named(layers: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        config_from_dict(_doc(layers))
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"schema": "slimscout.config/v0", "model_id": "m", "layers": {}}, "schema"),
        ({"schema": SCHEMA_V1, "layers": {}}, "model_id"),
        ({"schema": SCHEMA_V1, "model_id": "m", "layers": []}, "layers"),
        ({"schema": SCHEMA_V1, "model_id": "m", "layers": {}, "surprise": 1}, "surprise"),
    ],
)
def test_bad_top_level_fields_are_named(doc: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc)
    assert info.value.field == field


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
