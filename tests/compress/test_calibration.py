from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress import calibration as calibration_module
from compress.calibration import CalibrationStats, GramFiles, _blocks, collect_stats
from compress.catalog import load_model
from compress.data import token_stream
from compress.layers import linear_layers


def _whole_model_grams(model: torch.nn.Module, names: list[str], tokens: torch.Tensor,
                       seq_len: int) -> dict[str, torch.Tensor]:
    """XᵀX of every layer's input from plain whole-model forward passes (float64)."""
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(_m, inputs, _o) -> None:  # type: ignore[no-untyped-def]
            flat = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + flat.T @ flat

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    with torch.inference_mode():
        for i in range(0, tokens.numel(), seq_len):
            model(input_ids=tokens[i : i + seq_len][None])
    for handle in handles:
        handle.remove()
    return grams


@pytest.mark.parametrize(("model_id", "float64_max_inputs"),
                         [("tiny-llama", 4096), ("tiny-bert", 4096), ("tiny-llama", 0)])  # 0: float32 sums only
def test_block_by_block_grams_equal_whole_model_grams(model_id: str, float64_max_inputs: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration_module, "FLOAT64_MAX_INPUTS", float64_max_inputs)
    loaded = load_model(model_id)
    layers = linear_layers(loaded.model)
    assert _blocks(loaded.model, layers) is not None  # the block-by-block path is the one under test
    tokens = token_stream("lee-news", "calibration", loaded.tokenizer).ids[:300]
    seq_len = 128 if model_id == "tiny-llama" else 100
    stats = collect_stats(loaded.model, layers, tokens, seq_len)
    expected = _whole_model_grams(loaded.model, [layer.name for layer in layers], tokens, seq_len)
    assert stats.n_tokens == 300
    for layer in layers:
        assert torch.allclose(stats.gram(layer.name).double(), expected[layer.name], rtol=1e-5, atol=1e-4), layer
    assert stats.leader[layers[1].name] == layers[0].name  # k reads q's input: one Gram, shared


def test_grams_stay_float32_in_a_bfloat16_model() -> None:
    loaded = load_model("tiny-llama", dtype="bfloat16")
    layers = linear_layers(loaded.model)
    tokens = token_stream("lee-news", "calibration", loaded.tokenizer).ids[:256]
    stats = collect_stats(loaded.model, layers, tokens, 128)
    full = collect_stats(load_model("tiny-llama").model, layers, tokens, 128)
    for layer in layers:
        gram = stats.gram(layer.name)
        assert gram.dtype == torch.float32
        # bfloat16 activations: close to the float32 model's Grams, not equal
        assert torch.linalg.norm(gram - full.gram(layer.name)) < 0.05 * torch.linalg.norm(full.gram(layer.name))


def test_on_disk_stats_read_one_block_at_a_time(tmp_path: Path) -> None:
    loaded = load_model("tiny-llama")
    layers = linear_layers(loaded.model)
    tokens = token_stream("lee-news", "calibration", loaded.tokenizer).ids[:256]
    built = CalibrationStats.collect_to(tmp_path, loaded.model, layers, tokens, keep_in_memory=False)
    assert len(list(tmp_path.glob("block-*.safetensors"))) == 4  # tiny-llama's blocks
    again = CalibrationStats.load(tmp_path, keep_in_memory=False, device=torch.device("cpu"))
    assert again is not None and isinstance(again.grams, GramFiles)
    for layer in layers:
        assert torch.equal(again.gram(layer.name), built.gram(layer.name))
    assert again.grams._loaded == {}  # nothing kept: each read comes from its file
    (tmp_path / "index.json").unlink()  # an unfinished collection is no collection
    assert CalibrationStats.load(tmp_path, keep_in_memory=True, device=torch.device("cpu")) is None


@pytest.mark.parametrize("keep_in_memory", [True, False])
def test_an_owned_gram_is_the_callers_to_overwrite(tmp_path: Path, keep_in_memory: bool) -> None:
    loaded = load_model("tiny-llama")
    layers = linear_layers(loaded.model)
    tokens = token_stream("lee-news", "calibration", loaded.tokenizer).ids[:256]
    stats = CalibrationStats.collect_to(tmp_path, loaded.model, layers, tokens, keep_in_memory=keep_in_memory)
    name = layers[0].name
    before = stats.gram(name).clone()
    owned = stats.owned_gram(name)
    assert torch.equal(owned, before)
    owned.zero_()
    assert torch.equal(stats.gram(name), before)
    in_memory = CalibrationStats(dict(stats.grams), stats.leader, stats.n_tokens, stats.seconds)  # a plain dict
    owned = in_memory.owned_gram(name)
    owned.zero_()
    assert torch.equal(in_memory.gram(name), before)
