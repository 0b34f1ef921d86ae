"""Export (``slimscout apply``) and ``load_compressed``: the written model computes what the config says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from common.errors import ConfigError, CorruptCheckpointError, ExportError, ModelNotFoundError
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, LowRankSpec, config_from_dict
from compress.export import (
    CONFIG_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    LowRankLinear,
    export_compressed,
    load_compressed,
)
from compress.layers import LinearLayer
from compress.session import ModelSession
from slimscout.cli import main

L0 = "model.layers.0"
L1 = "model.layers.1"

# tiny-llama: q/o 64x64, k/v 32x64, gate/up 128x64, down 64x128 (out x in)
CONFIGS: dict[str, dict[str, Any]] = {
    "lowrank": {name: {"lowrank": {"rank": 8}} for name in (
        f"{L0}.self_attn.q_proj", f"{L0}.self_attn.k_proj", f"{L0}.mlp.gate_proj", f"{L1}.mlp.down_proj")},
    "lowrank-plain-svd": {f"{L1}.self_attn.o_proj": {"lowrank": {"rank": 4, "method": "svd"}}},
    "lowrank-rank-too-high": {f"{L0}.self_attn.q_proj": {"lowrank": {"rank": 32}},  # 32*(64+64) == 64*64
                              f"{L0}.self_attn.v_proj": {"lowrank": {"rank": 32}}},  # full rank
    "sparsity": {f"{L0}.mlp.up_proj": {"sparsity": {"ratio": 0.5, "score": "wanda"}},
                 f"{L1}.self_attn.k_proj": {"sparsity": {"ratio": 0.5, "score": "magnitude",
                                                         "pattern": "2:4"}}},
    "quant": {f"{L0}.mlp.down_proj": {"quant": {"bits": 4, "group_size": 32}},
              f"{L1}.self_attn.q_proj": {"quant": {"bits": 8, "group_size": 16, "outliers": "1:8"}}},
    "mix": {f"{L0}.self_attn.q_proj": {"lowrank": {"rank": 8}, "sparsity": {"ratio": 0.25, "score": "wanda"},
                                       "quant": {"bits": 8, "group_size": 8}},
            f"{L0}.mlp.gate_proj": {"lowrank": {"rank": 16}, "quant": {"bits": 4, "group_size": 16}},
            f"{L0}.self_attn.o_proj": {"lowrank": {"rank": 40},  # 40 * 128 > 64 * 64: stored dense
                                       "sparsity": {"ratio": 0.5, "score": "magnitude"}},
            f"{L1}.mlp.up_proj": {"sparsity": {"ratio": 0.3}, "quant": {"bits": 8, "group_size": 64}},
            f"{L1}.mlp.down_proj": {"quant": {"bits": 4, "group_size": 128}}},
}


def make_config(layers: dict[str, Any], model_id: str = "tiny-llama") -> CompressionConfig:
    return config_from_dict({"schema": "slimscout.config/v1", "model_id": model_id, "layers": layers})


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path_factory.mktemp("export-cache"))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def stored_weights(model: nn.Module, name: str) -> list[torch.Tensor]:
    module = model.get_submodule(name)
    if isinstance(module, LowRankLinear):
        return [module.up.weight, module.down.weight]
    assert isinstance(module, nn.Linear)
    return [module.weight]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_round_trip_computes_what_the_session_computes(session: ModelSession, ids: torch.Tensor,
                                                       tmp_path: Path, kind: str) -> None:
    config = make_config(CONFIGS[kind])
    result = export_compressed(session, config, tmp_path / "out")
    with session.applied(config):
        expected = logits(session.model, ids)
    model = load_compressed(tmp_path / "out")
    assert torch.allclose(logits(model, ids), expected, atol=1e-5, rtol=0)
    cost = session.cost(config)
    assert result.params_kept == cost.params and result.accounted_bytes == cost.bytes

    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["totals"]["params"] == cost.params and manifest["totals"]["bytes"] == cost.bytes
    assert manifest["totals"]["model_file_bytes"] == (tmp_path / "out" / WEIGHTS_NAME).stat().st_size
    assert json.loads((tmp_path / "out" / CONFIG_NAME).read_text()) == config.to_dict()
    stored = elements = nonzero = 0
    for layer in session.layers:
        entry, weights = manifest["layers"][layer.name], stored_weights(model, layer.name)
        cfg = config.layers.get(layer.name)
        factored = len(weights) == 2
        assert entry["storage"] == ("factored" if factored else "dense")
        assert [list(w.shape) for w in weights] == list(entry["tensors"].values())
        assert entry["file_params"] == sum(w.numel() for w in weights)
        assert entry["sparsity"] == ("dense-with-zeros" if cfg and cfg.sparsity else None)
        assert entry["quant"] == ("dequantized" if cfg and cfg.quant else None)
        stored += entry["params"]
        elements += sum(w.numel() for w in weights)
        nonzero += sum(int(w.count_nonzero()) for w in weights)
    assert stored == cost.params
    if not any(cfg.sparsity for cfg in config.layers.values()):
        assert elements == cost.params  # the stored parameter count is the accounted one
    elif not any(cfg.quant for cfg in config.layers.values()):
        assert nonzero == cost.params  # pruned weights are the stored zeros
    if kind == "lowrank":
        assert manifest["totals"]["factored_layers"] == 4 and result.factored_layers == 4
        assert result.stored_params == result.params_total < session.params_total
    if kind == "lowrank-rank-too-high":
        assert manifest["totals"]["factored_layers"] == 0
        assert manifest["layers"][f"{L0}.self_attn.q_proj"]["rank"] == 32


def test_factored_layers_save_parameters_in_the_file(session: ModelSession, tmp_path: Path) -> None:
    config = make_config({layer.name: {"lowrank": {"rank": 4, "method": "svd"}} for layer in session.layers})
    export_compressed(session, config, tmp_path / "small")
    export_compressed(session, make_config({}), tmp_path / "dense")
    model = load_compressed(tmp_path / "small")
    assert all(isinstance(model.get_submodule(layer.name), LowRankLinear) for layer in session.layers)
    saved = (session.params_linear - session.cost(config).params) * 4  # float32
    small, dense = ((tmp_path / d / WEIGHTS_NAME).stat().st_size for d in ("small", "dense"))
    assert abs((dense - small) - saved) < 64 * 1024  # only the header differs otherwise
    assert model.get_parameter("lm_head.weight") is model.get_parameter("model.embed_tokens.weight")  # tied


def test_merge_loads_with_plain_transformers(session: ModelSession, ids: torch.Tensor,
                                             tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = make_config(CONFIGS["mix"])
    result = export_compressed(session, config, tmp_path / "merged", merge=True)
    assert result.merged and result.factored_layers == 0
    with session.applied(config):
        expected = logits(session.model, ids)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any(isinstance(m, LowRankLinear) for m in plain.modules())
    assert torch.allclose(logits(plain.eval(), ids), expected, atol=1e-5, rtol=0)
    assert torch.allclose(logits(load_compressed(tmp_path / "merged"), ids), expected, atol=1e-5, rtol=0)


def test_encoder_round_trip_keeps_its_architecture(tmp_path: Path) -> None:
    session = ModelSession(load_model("tiny-bert"), cache_dir=tmp_path / "cache")
    first = session.layers[0].name
    config = make_config({first: {"lowrank": {"rank": 4, "method": "svd"}}}, model_id="tiny-bert")
    export_compressed(session, config, tmp_path / "out")
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with session.applied(config), torch.no_grad():
        expected = session.model(input_ids=ids).last_hidden_state
    model = load_compressed(tmp_path / "out")  # BertModel without a pooler, as exported
    assert isinstance(model.get_submodule(first), LowRankLinear)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).last_hidden_state, expected, atol=1e-5, rtol=0)
    assert next(load_compressed(tmp_path / "out", dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_session_model_is_dense_again_after_export(session: ModelSession, ids: torch.Tensor,
                                                   tmp_path: Path) -> None:
    before = logits(session.model, ids)
    export_compressed(session, make_config(CONFIGS["mix"]), tmp_path / "out")
    assert not any(isinstance(m, LowRankLinear) for m in session.model.modules())
    assert torch.equal(logits(session.model, ids), before)


def test_existing_target_is_refused_unless_forced(session: ModelSession, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    config = make_config(CONFIGS["lowrank"])
    with pytest.raises(ExportError, match="already exists"):
        export_compressed(session, config, out)
    with pytest.raises(ExportError, match="not a slimscout export"):  # --force never deletes foreign files
        export_compressed(session, config, out, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    export_compressed(session, config, out, force=True)  # an empty directory may be replaced
    first = json.loads((out / MANIFEST_NAME).read_text())
    export_compressed(session, make_config(CONFIGS["quant"]), out, force=True)  # and an earlier export
    second = json.loads((out / MANIFEST_NAME).read_text())
    assert first["totals"]["factored_layers"] == 4 and second["totals"]["factored_layers"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_config_for_another_model_is_refused(session: ModelSession, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_id"):
        export_compressed(session, make_config(CONFIGS["lowrank"], model_id="smollm2-135m"), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"layers\.model\.layers\.9\.mlp\.up_proj"):
        export_compressed(session, make_config({"model.layers.9.mlp.up_proj": {"quant": {}}}), tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def failing_save(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import compress.export

    def half_write(model: nn.Module, directory: Path, **_: object) -> None:
        (directory / WEIGHTS_NAME).write_bytes(b"\0" * 1000)
        raise OSError("disk full")

    monkeypatch.setattr(compress.export, "_write_weights", half_write)
    yield


def test_a_failure_mid_write_leaves_nothing_behind(session: ModelSession, ids: torch.Tensor, tmp_path: Path,
                                                   failing_save: None) -> None:
    before = logits(session.model, ids)
    with pytest.raises(OSError, match="disk full"):
        export_compressed(session, make_config(CONFIGS["lowrank"]), tmp_path / "new" / "deeper" / "out")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary directory, no parents we created
    assert torch.equal(logits(session.model, ids), before)  # and the session is dense again


def test_a_failed_force_keeps_the_previous_export(session: ModelSession, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.export

    out = tmp_path / "out"
    export_compressed(session, make_config(CONFIGS["quant"]), out)
    before = sorted(p.name for p in out.iterdir())

    def fail(model: nn.Module, directory: Path, **_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(compress.export, "_write_weights", fail)
    with pytest.raises(OSError):
        export_compressed(session, make_config(CONFIGS["lowrank"]), out, force=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_truncated_checkpoint_is_a_clear_error(session: ModelSession, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    export_compressed(session, make_config(CONFIGS["lowrank"]), out)
    weights = out / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="is truncated or corrupt"):
        load_compressed(out)
    assert issubclass(CorruptCheckpointError, ModelNotFoundError)
    assert main(["evaluate", "--model", str(out), "--tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_a_checkpoint_that_disagrees_with_its_manifest(session: ModelSession, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_compressed(session, make_config(CONFIGS["lowrank"]), out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["layers"][f"{L0}.self_attn.q_proj"]["rank"] = 9
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match="does not match its manifest"):
        load_compressed(out)
    with pytest.raises(ModelNotFoundError, match="not a slimscout export"):
        load_compressed(tmp_path)


def test_cli_apply_then_evaluate_the_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = {**CONFIGS["lowrank-plain-svd"], f"{L0}.mlp.up_proj": {"lowrank": {"rank": 8, "method": "svd"}},
              f"{L1}.mlp.gate_proj": {"quant": {"bits": 4, "group_size": 32}}}
    make_config(layers).save(tmp_path / "config.json")
    out = tmp_path / "out"
    apply = ["apply", "--model", "tiny-llama", "--config", str(tmp_path / "config.json"), "--out", str(out)]
    assert main([*apply, "--json"]) == 0
    applied = json.loads(capsys.readouterr().out)
    assert set(applied) >= {"out", "params_kept", "params_total", "file_bytes", "accounted_bytes", "seconds"}
    assert applied["out"] == str(out.absolute())
    assert applied["file_bytes"] == (out / WEIGHTS_NAME).stat().st_size

    assert main(["evaluate", "--model", "tiny-llama", "--config", str(tmp_path / "config.json"),
                 "--tokens", "256", "--json"]) == 0
    original = json.loads(capsys.readouterr().out)
    assert original["params_kept"] == applied["params_kept"]
    assert main(["evaluate", "--model", str(out), "--tokens", "256", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["ppl"] == pytest.approx(original["ppl"], rel=1e-5)
    # On an export, params count what the directory really stores: factors as two small matrices.
    assert exported["params_total"] == applied["stored_params"] == applied["params_total"]
    # and it is accounted as the compressed model it is (its manifest), not as a new dense model
    for key in ("params_kept", "keep_ratio", "bytes", "bits_per_weight", "params_linear", "params_total_dense"):
        assert exported[key] == original[key], key
    assert exported["accounting"] == "export manifest" and original["accounting"] == "config"

    assert main(apply) == 2
    assert "already exists" in capsys.readouterr().err
    make_config(layers, model_id="tiny-bert").save(tmp_path / "other.json")
    assert main(["apply", "--model", "tiny-llama", "--config", str(tmp_path / "other.json"), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "model_id" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def _half_keep_config(session: ModelSession, model_id: str) -> CompressionConfig:
    """Uniform svd-whitened ranks with r * (in + out) ~ 0.5 * in * out in every layer."""
    def rank(layer: LinearLayer) -> int:
        return layer.params // (2 * (layer.in_features + layer.out_features))

    return CompressionConfig(model_id, {layer.name: LayerConfig(LowRankSpec(rank(layer), "svd-whitened"))
                                        for layer in session.layers})


@pytest.mark.slow
def test_real_model_export_evaluates_like_the_config(tmp_path: Path) -> None:
    from slimscout.commands.evaluate import evaluate

    session = ModelSession.open("smollm2-135m")
    config = _half_keep_config(session, "smollm2-135m")
    cost = session.cost(config)
    assert 0.45 < cost.params / session.params_linear < 0.5
    config.save(tmp_path / "config.json")
    result = export_compressed(session, config, tmp_path / "out")
    assert result.factored_layers == len(session.layers) and result.params_kept == cost.params
    del session
    original = evaluate(model_id="smollm2-135m", config_path=str(tmp_path / "config.json"),
                        dataset="lee-news", split="search", tokens=512)
    exported = evaluate(model_id=str(tmp_path / "out"), config_path=None, dataset="lee-news", split="search",
                        tokens=512)
    assert exported["ppl"] == pytest.approx(original["ppl"], rel=5e-3)
    assert exported["params_total"] == result.stored_params
