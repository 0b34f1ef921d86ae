"""LayerProxy against the tiny model: zero when dense, monotone, and equal to measured output errors."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from compress.config import LayerConfig, LowRankMethod, LowRankSpec, QuantSpec, SparsityScore, SparsitySpec
from compress.data import token_stream
from compress.ops import tail_energy
from compress.session import ModelSession
from predictor.proxy import LayerProxy

DOWN = "model.layers.1.mlp.down_proj"  # 128 -> 64
Q = "model.layers.0.self_attn.q_proj"  # 64 -> 64
K = "model.layers.2.self_attn.k_proj"  # 64 -> 32
LAYERS = (DOWN, Q, K)


@pytest.fixture(scope="module")
def calibration_inputs(session: ModelSession) -> dict[str, torch.Tensor]:
    """Every layer's inputs on the calibration tokens the Gram matrices were built from."""
    ids = token_stream(session.calibration_dataset, "calibration", session.loaded.tokenizer).ids
    ids = ids[: session.calibration_tokens]
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
    handles = [session.modules[name].register_forward_hook(
        lambda _m, args, _o, name=name: inputs[name].append(args[0].reshape(-1, args[0].shape[-1]).double()))
        for name in LAYERS]
    try:
        with session.dense(), torch.no_grad():
            for start in range(0, ids.numel(), 512):
                session.model(input_ids=ids[start : start + 512][None])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks) for name, chunks in inputs.items()}


def measured(session: ModelSession, inputs: dict[str, torch.Tensor], name: str, cfg: LayerConfig) -> float:
    """||(W - W') Xᵀ||² / ||W Xᵀ||² on the calibration inputs, W' as the session applies it."""
    dense = session.compressed_weight(name, LayerConfig()).double()
    approx = session.compressed_weight(name, cfg).double()
    x = inputs[name]
    return float(((dense - approx) @ x.T).square().sum() / (dense @ x.T).square().sum())


@pytest.mark.parametrize("name", LAYERS)
def test_dense_is_zero(proxy: LayerProxy, name: str) -> None:
    assert proxy.error(name, None) == 0.0
    assert proxy.error(name, LayerConfig()) == 0.0
    assert proxy.error(name, LayerConfig(sparsity=SparsitySpec(0.0))) == 0.0
    full = proxy.session.by_name[name].full_rank
    assert proxy.error(name, LayerConfig(lowrank=LowRankSpec(full))) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("score", ["wanda", "magnitude"])
def test_increases_with_sparsity(proxy: LayerProxy, name: str, score: SparsityScore) -> None:
    ratios = np.linspace(0, 0.95, 20)
    errors = [proxy.error(name, LayerConfig(sparsity=SparsitySpec(float(r), score))) for r in ratios]
    assert errors[0] == 0.0 and errors[-1] > 0.3
    assert all(b > a for a, b in itertools.pairwise(errors))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("method", ["svd-whitened", "svd"])
def test_increases_as_rank_falls(proxy: LayerProxy, name: str, method: LowRankMethod) -> None:
    full = proxy.session.by_name[name].full_rank
    errors = [proxy.error(name, LayerConfig(lowrank=LowRankSpec(r, method))) for r in range(full, 0, -1)]
    assert all(b > a for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1.0


@pytest.mark.parametrize("name", LAYERS)
def test_lowrank_matches_measured_output_error(session: ModelSession, proxy: LayerProxy,
                                               calibration_inputs: dict[str, torch.Tensor],
                                               name: str) -> None:
    factors = session.svd("svd-whitened")[name]
    for rank in (2, 8, 16, 24):
        cfg = LayerConfig(lowrank=LowRankSpec(rank, "svd-whitened"))
        truth = measured(session, calibration_inputs, name, cfg)
        # whitened tail energy is the output error for the (slightly damped) Gram matrix: roughly equal
        assert tail_energy(factors, rank) == pytest.approx(truth, rel=0.05, abs=2e-3)
        # the proxy uses the Gram matrix itself: equal up to float32 factors
        assert proxy.error(name, cfg) == pytest.approx(truth, rel=1e-3, abs=1e-5)
        plain = LayerConfig(lowrank=LowRankSpec(rank, "svd"))
        assert proxy.error(name, plain) == pytest.approx(measured(session, calibration_inputs, name, plain),
                                                         rel=1e-3, abs=1e-5)
        # whitening is optimal in this metric
        assert proxy.error(name, plain) >= proxy.error(name, cfg) - 1e-6


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("cfg", [
    LayerConfig(sparsity=SparsitySpec(0.3)),
    LayerConfig(sparsity=SparsitySpec(0.6, "magnitude")),
    LayerConfig(sparsity=SparsitySpec(0.5, "wanda", "2:4")),
    LayerConfig(quant=QuantSpec(4, 32)),
    LayerConfig(quant=QuantSpec(4, 16, "1:8")),
    LayerConfig(sparsity=SparsitySpec(0.5), quant=QuantSpec(4, 32)),
    LayerConfig(lowrank=LowRankSpec(12), sparsity=SparsitySpec(0.3)),
    LayerConfig(lowrank=LowRankSpec(16, "svd"), sparsity=SparsitySpec(0.5, "magnitude")),
    LayerConfig(lowrank=LowRankSpec(8), sparsity=SparsitySpec(0.5, "wanda", "2:4")),
    LayerConfig(lowrank=LowRankSpec(12), quant=QuantSpec(4, 8)),
], ids=lambda cfg: repr(cfg.to_dict()))
def test_other_settings_track_measured_output_error(session: ModelSession, proxy: LayerProxy,
                                                    calibration_inputs: dict[str, torch.Tensor], name: str,
                                                    cfg: LayerConfig) -> None:
    """Sparsity and quantization proxies use the diagonal of the Gram matrix: close, not exact."""
    truth = measured(session, calibration_inputs, name, cfg)
    assert proxy.error(name, cfg) == pytest.approx(truth, rel=0.15, abs=1e-4)


def test_composition_adds_error(proxy: LayerProxy) -> None:
    lowrank = LayerConfig(lowrank=LowRankSpec(12))
    both = LayerConfig(lowrank=LowRankSpec(12), sparsity=SparsitySpec(0.5))
    all_three = LayerConfig(lowrank=LowRankSpec(12), sparsity=SparsitySpec(0.5), quant=QuantSpec(4, 32))
    assert 0 < proxy.error(DOWN, lowrank) < proxy.error(DOWN, both) < proxy.error(DOWN, all_three) < 1


def test_unknown_layer_is_rejected(proxy: LayerProxy) -> None:
    with pytest.raises(ValueError, match="not a compressible linear layer"):
        proxy.error("model.layers.9.mlp.down_proj", LayerConfig(sparsity=SparsitySpec(0.5)))


def test_errors_covers_every_layer(proxy: LayerProxy) -> None:
    errors = proxy.errors({DOWN: LayerConfig(sparsity=SparsitySpec(0.5))})
    assert list(errors) == [layer.name for layer in proxy.layers]
    assert errors[DOWN] > 0 and sum(v > 0 for v in errors.values()) == 1


def test_fresh_settings_are_table_lookups(session: ModelSession) -> None:
    """After warm-up, a config of 210 layers with never-seen ranks and ratios takes milliseconds."""
    proxy = LayerProxy(session)
    layers = session.layers
    for layer in layers:  # warm-up: builds each layer's curves once
        proxy.error(layer.name, LayerConfig(lowrank=LowRankSpec(3), sparsity=SparsitySpec(0.1)))
        proxy.error(layer.name, LayerConfig(lowrank=LowRankSpec(4)))
        proxy.error(layer.name, LayerConfig(sparsity=SparsitySpec(0.1)))
    rng = np.random.default_rng(0)
    settings = []
    for i in range(210):
        layer = layers[i % len(layers)]
        rank, ratio = int(rng.integers(1, layer.full_rank)), float(rng.uniform(0.05, 0.9))
        choices = [LayerConfig(lowrank=LowRankSpec(rank)), LayerConfig(sparsity=SparsitySpec(ratio)),
                   LayerConfig(lowrank=LowRankSpec(rank), sparsity=SparsitySpec(ratio))]
        settings.append((layer.name, choices[i % 3]))
    start = time.perf_counter()
    for name, cfg in settings:
        proxy.error(name, cfg)
    assert time.perf_counter() - start < 0.25
