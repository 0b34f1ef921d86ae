from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from compress.baselines import build_baseline, owl_outlier_ratios
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, LowRankSpec, QuantSpec, SparsitySpec
from compress.session import ModelSession


@pytest.fixture
def session(tmp_path: Path) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512)


def _mixed(session: ModelSession) -> CompressionConfig:
    names = [layer.name for layer in session.layers]
    return CompressionConfig(
        "tiny-llama",
        {
            names[0]: LayerConfig(lowrank=LowRankSpec(8, "svd-whitened")),
            names[1]: LayerConfig(sparsity=SparsitySpec(0.5, "wanda")),
            names[2]: LayerConfig(sparsity=SparsitySpec(0.5, "magnitude", "2:4"), quant=QuantSpec(8, 32)),
            names[3]: LayerConfig(lowrank=LowRankSpec(4, "svd"), sparsity=SparsitySpec(0.25, "wanda")),
            names[4]: LayerConfig(quant=QuantSpec(4, 32, "1:8")),
        },
    )


def test_apply_then_restore_is_bit_identical(session: ModelSession) -> None:
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    session.apply(_mixed(session))
    changed = session.modules[session.layers[0].name].weight
    assert not torch.equal(changed, before[session.layers[0].name + ".weight"])
    session.restore()
    for key, value in session.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_config_left_applied_is_undone_by_the_next_apply_and_never_seen_as_dense(tmp_path: Path) -> None:
    dense = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path / "a", calibration_tokens=512)
    session = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path / "b", calibration_tokens=512)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    names = [layer.name for layer in session.layers]
    everything = CompressionConfig("tiny-llama", {n: LayerConfig(sparsity=SparsitySpec(0.5, "magnitude"))
                                                  for n in names})
    with session.applied(everything, restore_after=False):
        pass
    assert not torch.equal(session.modules[names[1]].weight, before[names[1] + ".weight"])
    # What needs the dense model gets it: calibration statistics and an evaluator's reference.
    assert torch.equal(session.stats().gram(names[1]), dense.stats().gram(names[1]))
    reference = session.evaluator(tokens=64).reference()
    assert torch.equal(reference.nll, dense.evaluator(tokens=64).reference().nll)
    # A config touching one layer puts every other layer back.
    one = CompressionConfig("tiny-llama", {names[0]: LayerConfig(sparsity=SparsitySpec(0.5, "wanda"))})
    with session.applied(one):
        for n in names[1:]:
            assert torch.equal(session.modules[n].weight, before[n + ".weight"]), n
    for key, value in session.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_applying_over_the_last_config_gives_the_same_weights_as_applying_from_dense(tmp_path: Path) -> None:
    """Unstructured sparsity is written incrementally over what the last trial left; it must not drift."""
    session = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512)
    fresh = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512)
    names = [layer.name for layer in session.layers]
    rng = random.Random(0)

    def layer_config() -> LayerConfig:
        kind = rng.choice(["wanda", "wanda", "magnitude", "lowrank", "dense"])
        if kind == "lowrank":
            return LayerConfig(lowrank=LowRankSpec(4, "svd"))
        if kind == "dense":
            return LayerConfig()
        return LayerConfig(sparsity=SparsitySpec(rng.choice([0.0, 0.1, 0.3, 0.5, 0.55, 0.9, 0.99]), kind))

    for step in range(40):
        chosen = rng.sample(names, rng.randint(1, len(names)))
        config = CompressionConfig("tiny-llama", {name: layer_config() for name in chosen})
        with session.applied(config, restore_after=rng.random() < 0.2), fresh.applied(config):
            for name in names:
                assert torch.equal(session.modules[name].weight, fresh.modules[name].weight), (step, name)
        if step % 7 == 0:
            session.stats()  # runs under dense() and puts the applied weights back
            with session.dense():
                pass


def test_applied_weights_have_the_counted_nonzeros(session: ModelSession) -> None:
    config = CompressionConfig(
        "tiny-llama", {layer.name: LayerConfig(sparsity=SparsitySpec(0.5, "wanda")) for layer in session.layers}
    )
    with session.applied(config):
        nonzero = sum(int((session.modules[n].weight != 0).sum()) for n in session.by_name)
    assert nonzero == session.cost(config).params


def test_bad_configs_name_the_problem(session: ModelSession) -> None:
    name = session.layers[0].name
    with pytest.raises(ConfigError, match=r"layers\.model\.layers\.9\.nope"):
        session.cost(CompressionConfig("tiny-llama", {"model.layers.9.nope": LayerConfig(quant=QuantSpec())}))
    with pytest.raises(ConfigError, match=f"layers.{name}.lowrank.rank"):
        session.cost(CompressionConfig("tiny-llama", {name: LayerConfig(lowrank=LowRankSpec(10_000))}))
    with pytest.raises(ConfigError, match="pattern"):
        session.cost(CompressionConfig("tiny-llama", {name: LayerConfig(sparsity=SparsitySpec(0.8, "wanda", "4:5"))}))
    with pytest.raises(ConfigError, match="model_id"):
        session.check_model(CompressionConfig("other-model", {}))


def test_caches_persist_across_sessions(tmp_path: Path) -> None:
    first = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512)
    first.warm(_mixed(first))
    assert {"calibration", "svd-whitened", "svd"} <= set(first.timings.built)
    second = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path, calibration_tokens=512)
    second.warm(_mixed(second))
    assert second.timings.built == []
    name = first.layers[0].name
    assert torch.equal(first.svd("svd-whitened")[name].left, second.svd("svd-whitened")[name].left)
    assert torch.equal(first.stats().gram(name), second.stats().gram(name))


def test_applying_is_cheap_after_warm_up(session: ModelSession) -> None:
    config = _mixed(session)
    session.warm(config)
    start = time.perf_counter()
    for _ in range(3):
        session.apply(config)
    assert session.timings.built.count("calibration") == 1
    assert time.perf_counter() - start < 30  # generous; benchmarks report the real ratio


@pytest.mark.parametrize("method", ["uniform", "owl", "sensitivity"])
@pytest.mark.parametrize("budget", [0.4, 0.6])
def test_baselines_meet_the_budget(session: ModelSession, method: str, budget: float) -> None:
    kwargs = {"tokens": 64} if method == "sensitivity" else {}
    result = build_baseline(method, session, budget, ["wanda"], **kwargs)
    kept = session.cost(result.config).params / session.params_linear
    assert abs(kept - budget) <= 0.005 * budget
    if method == "sensitivity":
        assert result.evaluations > 0
        again = build_baseline(method, session, budget, ["wanda"], **kwargs)
        assert again.evaluations == 0  # cached scan
        assert again.allocation.keep == result.allocation.keep


def test_owl_gives_outlier_rich_blocks_more(session: ModelSession) -> None:
    ratios = owl_outlier_ratios(session)
    result = build_baseline("owl", session, 0.5, ["wanda"])
    block_keep = {layer.block: result.allocation.keep[layer.name] for layer in session.layers}
    most, least = max(ratios, key=ratios.__getitem__), min(ratios, key=ratios.__getitem__)
    assert ratios[most] > ratios[least]  # the tiny model's blocks do differ, so the test can tell
    assert block_keep[most] > block_keep[least]
    # keep is an increasing function of the outlier ratio, block by block
    by_ratio = sorted(ratios, key=ratios.__getitem__)
    assert [block_keep[b] for b in by_ratio] == sorted(block_keep[b] for b in by_ratio)


def test_a_layer_asked_for_what_it_holds_is_not_rewritten(session: ModelSession, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    names = [layer.name for layer in session.layers]
    computed: list[str] = []
    compressed_weight = session.compressed_weight

    def counting(name: str, cfg: LayerConfig) -> torch.Tensor:
        computed.append(name)
        return compressed_weight(name, cfg)

    monkeypatch.setattr(session, "compressed_weight", counting)
    rank = {n: LayerConfig(lowrank=LowRankSpec(4, "svd")) for n in names[:3]}
    session.apply(CompressionConfig("tiny-llama", rank))
    assert computed == names[:3]
    computed.clear()
    changed = {**rank, names[1]: LayerConfig(lowrank=LowRankSpec(2, "svd"))}
    session.apply(CompressionConfig("tiny-llama", changed))
    assert computed == [names[1]]
    computed.clear()
    with session.dense():  # what dense() puts back is still known to be held
        pass
    session.apply(CompressionConfig("tiny-llama", changed))
    assert computed == []
    fresh = ModelSession(load_model("tiny-llama"), cache_dir=session.cache_dir, calibration_tokens=512)
    fresh.apply(CompressionConfig("tiny-llama", changed))
    for name in names:
        assert torch.equal(session.modules[name].weight, fresh.modules[name].weight), name
    session.restore(keep={names[0]})  # restored layers hold nothing: asking again writes them
    session.apply(CompressionConfig("tiny-llama", changed))
    assert computed == names[1:3]


def _wanda_everywhere(session: ModelSession) -> CompressionConfig:
    return CompressionConfig(
        "tiny-llama", {layer.name: LayerConfig(sparsity=SparsitySpec(0.5, "wanda")) for layer in session.layers}
    )


def test_a_bfloat16_session_evaluates_applies_and_restores(tmp_path: Path) -> None:
    session = ModelSession(load_model("tiny-llama", dtype="bfloat16"), cache_dir=tmp_path, calibration_tokens=512)
    assert session.loaded.dtype == torch.bfloat16
    assert session.loaded.fingerprint != load_model("tiny-llama").fingerprint  # its caches are its own
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    assert session.stats().gram(session.layers[0].name).dtype == torch.float32
    assert session.dense_weight(session.layers[0].name).dtype == torch.float32
    evaluator = session.evaluator(tokens=256)
    dense = evaluator.dense_metrics()
    config = _mixed(session)
    with session.applied(config):
        assert session.modules[session.layers[0].name].weight.dtype == torch.bfloat16
        metrics = evaluator.evaluate()
    assert metrics.ppl is not None and dense.ppl is not None and metrics.kl is not None
    assert metrics.kl > 0 and metrics.ppl != dense.ppl
    for key, value in session.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_low_memory_session_applies_the_same_weights_from_disk(tmp_path: Path) -> None:
    loaded = load_model("tiny-llama")
    small = ModelSession(loaded, cache_dir=tmp_path, calibration_tokens=512, low_memory=False)
    config = _wanda_everywhere(small)
    small.warm(config)
    small.apply(config)
    expected = {name: module.weight.detach().clone() for name, module in small.modules.items()}
    small.restore()
    dense = {name: module.weight.detach().clone() for name, module in small.modules.items()}

    big = ModelSession(loaded, cache_dir=tmp_path, calibration_tokens=512, low_memory=True)
    big.warm(config)
    assert "ranks-wanda" not in big.timings.built  # masks come from scores per layer, no ranks cache
    big.apply(config)
    for name, module in big.modules.items():
        assert torch.equal(module.weight, expected[name]), name
    assert list((tmp_path / "scratch").rglob("*.safetensors"))  # dense copies spilled, not held
    big.restore()
    for name, module in big.modules.items():
        assert torch.equal(module.weight, dense[name]), name
