"""The ``gptq`` operator: registered, the pure op on the dense Gram, on its grid, cached per layer and bits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from compress.budget import check_operators, layer_config, layer_quant
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, QuantSpec, SparsitySpec
from compress.operators.base import output_error
from compress.operators.gptq import DAMPENING, HANDLER, setting_key
from compress.ops import default_group_size, fake_quant, gptq
from compress.session import ModelSession


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gptq-cache")


@pytest.fixture(scope="module")
def session(cache: Path) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=cache)


def uniform(session: ModelSession, bits: int) -> CompressionConfig:
    return CompressionConfig("tiny-llama", {
        layer.name: LayerConfig(quant=layer_quant(layer, QuantSpec(bits, 128, method="gptq")))
        for layer in session.layers})


@pytest.mark.parametrize("bits", [3, 4])
def test_applied_weights_are_the_pure_op_on_the_dense_gram_and_on_the_grid(session: ModelSession, bits: int) -> None:
    with session.applied(uniform(session, bits)):
        for layer in session.layers:
            weight = session.modules[layer.name].weight
            group = default_group_size(layer.in_features)
            expected = gptq(session.dense_weight(layer.name), session.stats().gram(layer.name), bits=bits,
                            group_size=group, percdamp=DAMPENING)
            assert torch.equal(weight, expected.weight)
            # on the grid: each group is an integer multiple of its scale, within ±(2^(bits-1) - 1)
            scales = expected.quantized.scales.repeat_interleave(group, dim=1)
            codes = weight / scales
            assert torch.allclose(codes, codes.round(), atol=1e-4)
            assert codes.round().abs().max() <= 2 ** (bits - 1) - 1
            assert not torch.equal(weight, session.dense_weight(layer.name))
            # what an export writes: the op's own codes, scales and (fixed) zero points
            stored = HANDLER.grid(session, layer.name, session.dense_weight(layer.name),
                                  QuantSpec(bits, group, method="gptq"))
            assert stored.symmetric and HANDLER.symmetric
            for part in ("codes", "scales", "zeros"):
                assert torch.equal(getattr(stored, part), getattr(expected.quantized, part)), part
            assert torch.equal(stored.dequantize(), weight)
    assert all(torch.equal(m.weight, session.dense_weight(n)) for n, m in session.modules.items())


def test_it_rebuilds_the_output_better_than_round_to_nearest(session: ModelSession) -> None:
    stats = session.stats()
    with session.applied(uniform(session, 3)):
        errors = {n: output_error(session.dense_weight(n), m.weight, stats.gram(n)) for n, m in session.modules.items()}
    rtn = {}
    for layer in session.layers:
        dense = session.dense_weight(layer.name)
        rtn[layer.name] = output_error(dense, fake_quant(dense, 3, default_group_size(layer.in_features)),
                                       stats.gram(layer.name))
    assert sum(errors.values()) < 0.9 * sum(rtn.values())


def test_results_are_cached_on_disk_per_layer_and_bits_and_reused(session: ModelSession, cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = uniform(session, 4)
    with session.applied(config):
        first = {n: m.weight.clone() for n, m in session.modules.items()}
    layer = session.layers[0]
    spec = config.layers[layer.name].quant
    assert spec is not None
    assert (session.cache_dir / "gptq" / f"{layer.name}-{setting_key(spec)}.safetensors").is_file()
    assert len(list((session.cache_dir / "gptq").glob("*-b4-*.safetensors"))) == len(session.layers)

    import compress.operators.gptq as module

    def must_not_run(*_: object, **__: object) -> torch.Tensor:
        raise AssertionError("recomputed a cached layer")

    monkeypatch.setattr(module, "gptq", must_not_run)
    other = ModelSession(load_model("tiny-llama"), cache_dir=cache)
    with other.applied(config):
        for name, module_ in other.modules.items():
            assert torch.equal(module_.weight, first[name])


def test_sparse_layers_and_non_dividing_groups_are_refused_by_name(session: ModelSession) -> None:
    layer = session.layers[0]
    stacked = CompressionConfig("tiny-llama", {layer.name: LayerConfig(
        sparsity=SparsitySpec(0.5, "wanda"), quant=QuantSpec(4, 64, method="gptq"))})
    with pytest.raises(ConfigError, match=rf"layers\.{layer.name}\.quant\.method: gptq quantises"):
        session.cost(stacked)
    ragged = CompressionConfig("tiny-llama", {layer.name: LayerConfig(quant=QuantSpec(4, 48, method="gptq"))})
    with pytest.raises(ConfigError, match=rf"layers\.{layer.name}\.quant\.group_size"):
        session.cost(ragged)
    with pytest.raises(ConfigError, match="cannot stack"):
        check_operators(["wanda", "gptq"])


def test_the_operator_takes_a_dividing_group_per_layer() -> None:
    from compress.layers import LinearLayer

    narrow = LinearLayer("a", 0, "q", 576, 576)
    wide = LinearLayer("b", 0, "down", 1536, 576)
    assert layer_config(narrow, 0.25, "gptq").quant == QuantSpec(3, 64, method="gptq")
    assert layer_config(wide, 0.25, "gptq").quant == QuantSpec(3, 128, method="gptq")
