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
        ({"a": {"quant": {"bits": 5}}}, "layers.a.quant.bits"),
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


V1_DOCUMENT = """{
  "schema": "slimscout.config/v1",
  "model_id": "tiny-llama",
  "layers": {
    "model.layers.0.mlp.down_proj": {
      "lowrank": {
        "rank": 8,
        "method": "svd"
      },
      "sparsity": {
        "ratio": 0.5,
        "score": "magnitude",
        "pattern": "2:4"
      },
      "quant": {
        "bits": 4,
        "group_size": 32,
        "outliers": "1:8"
      }
    },
    "model.layers.1.self_attn.q_proj": {
      "sparsity": {
        "ratio": 0.3,
        "score": "wanda",
        "pattern": "unstructured"
      },
      "quant": {
        "bits": 8,
        "group_size": 128,
        "outliers": null
      }
    }
  },
  "meta": {
    "budget": 0.5
  }
}
"""


def test_a_v1_document_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(V1_DOCUMENT)
    out = tmp_path / "out.json"
    load_config(source).save(out)
    assert out.read_text() == V1_DOCUMENT


@pytest.mark.parametrize(
    ("layers", "field"),
    [
        ({"a": {"sparsity": {"ratio": "0.4"}}}, "layers.a.sparsity.ratio"),  # strict: no coercion from text
        ({"a": {"sparsity": {"ratio": True}}}, "layers.a.sparsity.ratio"),
        ({"a": {"lowrank": {"rank": 4.0}}}, "layers.a.lowrank.rank"),
        ({"a": {"lowrank": {"rank": True}}}, "layers.a.lowrank.rank"),
        ({"a": {"lowrank": {}}}, "layers.a.lowrank.rank"),
        ({"a": {"quant": {"bits": "8"}}}, "layers.a.quant.bits"),
        ({"a": {"quant": {"bits": 8, "method": "awq"}}}, "layers.a.quant.method"),
        ({"a": {"quant": {"bits": 8, "outliers": 3}}}, "layers.a.quant.outliers"),
        ({"a": {"sparsity": {"ratio": 0.5, "score": 1}}}, "layers.a.sparsity.score"),
    ],
)
def test_strict_types_name_the_field(layers: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        config_from_dict(_doc(layers))
    assert info.value.field == field


def test_direct_construction_names_the_field_too() -> None:
    with pytest.raises(ConfigError) as info:
        SparsitySpec(0.5, "random")
    assert info.value.field == "score"
    with pytest.raises(ConfigError) as info:
        LowRankSpec(0)
    assert info.value.field == "rank"
    with pytest.raises(ConfigError) as info:
        QuantSpec(5)
    assert info.value.field == "bits"
    with pytest.raises(ConfigError) as info:
        SparsitySpec(0.3, "wanda", "2:4")
    assert info.value.field == "ratio"


def test_entries_are_frozen_and_hashable() -> None:
    spec = SparsitySpec(0.5)
    with pytest.raises(AttributeError):
        spec.ratio = 0.1  # type: ignore[misc]
    assert {LayerConfig(sparsity=spec): 1}[LayerConfig(sparsity=SparsitySpec(0.5, "wanda"))] == 1


def test_quant_method_is_written_only_when_not_the_default() -> None:
    assert "method" not in LayerConfig(quant=QuantSpec(8)).to_dict()["quant"]
    assert QuantSpec(8) == QuantSpec(8, 128, None, "rtn")


def test_a_registered_quant_method_is_written_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from compress import registry
    from compress.config import layer_from_dict

    monkeypatch.setitem(registry.METHODS, ("quant", "toy"),
                        registry.MethodInfo("quant", "toy", "toy_module:HANDLER", "toy", bits=(3,)))
    entry = LayerConfig(quant=QuantSpec(3, 64, None, "toy"))
    assert entry.to_dict() == {"quant": {"bits": 3, "group_size": 64, "outliers": None, "method": "toy"}}
    assert layer_from_dict(entry.to_dict(), "layers.a") == entry
    with pytest.raises(ConfigError) as info:
        QuantSpec(8, 64, None, "toy")
    assert info.value.field == "bits"
