from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
import torch

from common.errors import ModelNotFoundError, UnsafeCheckpointError
from compress.catalog import CATALOG, load_model
from compress.layers import count_params, linear_layers


def test_catalog_names() -> None:
    assert {"smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert"} <= set(CATALOG)


def test_tiny_models_are_deterministic(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    again = load_model("tiny-llama")
    assert again.fingerprint == tiny_llama.fingerprint
    for a, b in zip(again.model.parameters(), tiny_llama.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert tiny_llama.kind == "causal-lm"
    assert load_model("tiny-bert").kind == "encoder"


def test_linear_layers_of_tiny_llama(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    layers = linear_layers(tiny_llama.model)
    assert len(layers) == 4 * 7
    assert [layer.type for layer in layers[:7]] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert {layer.block for layer in layers} == {0, 1, 2, 3}
    assert all("lm_head" not in layer.name for layer in layers)
    assert count_params(tiny_llama.model) > sum(layer.params for layer in layers)


def test_minilm_loads_from_its_package() -> None:
    loaded = load_model("minilm-l6")
    layers = linear_layers(loaded.model)
    assert len(layers) == 6 * 6
    assert {layer.type for layer in layers} == {"q", "k", "v", "o", "up", "down"}


def test_local_directory_round_trip(tmp_path: Path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    tiny_llama.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.kind == "causal-lm"
    assert torch.equal(loaded.model.model.layers[0].mlp.up_proj.weight,
                       tiny_llama.model.model.layers[0].mlp.up_proj.weight)


def test_unknown_id_fails_fast_with_a_clear_message() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="unknown model id"):
        load_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="hub is not reachable"):
        load_model("someorg/somemodel")
    assert time.perf_counter() - start < 10


def test_path_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"no \.safetensors"):
        load_model(str(tmp_path))


def test_pickle_checkpoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_model(str(tmp_path))
