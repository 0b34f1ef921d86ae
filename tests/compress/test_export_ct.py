"""Deployable exports: the compressed-tensors format, dtypes and shards, the model card."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

from common.errors import ExportError
from compress import registry
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, QuantSpec, SparsitySpec, config_from_dict
from compress.export import CARD_NAME, MANIFEST_NAME, export_compressed, load_compressed
from compress.model_card import CardMeasurement
from compress.operators.base import LayerContext, QuantHandler
from compress.ops import QuantizedWeight, default_group_size, fake_quant, gptq
from compress.session import ModelSession
from compress.weight_files import DTYPES, INDEX_NAME
from slimscout.cli import main
from slimscout.commands import apply as apply_command

L0 = "model.layers.0"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path_factory.mktemp("ct-cache"))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(3))


def uniform(session: ModelSession, **spec: Any) -> CompressionConfig:
    return CompressionConfig("tiny-llama", {layer.name: LayerConfig(**spec) for layer in session.layers})


def mixed_bits(session: ModelSession) -> CompressionConfig:
    """int8 for the MLP's down projections, int4 elsewhere; group 16 divides every layer (64 or 128 inputs)."""
    return CompressionConfig("tiny-llama", {
        layer.name: LayerConfig(quant=QuantSpec(8 if layer.type == "down" else 4, 16)) for layer in session.layers})


GPTQ_BITS = {"q": 3, "k": 3, "v": 8, "o": 4, "gate": 3, "up": 4, "down": 8}


def gptq_mixed(session: ModelSession) -> CompressionConfig:
    """GPTQ at 3, 4 and 8 bits by layer type, each layer at its default group size (64 or 128 here)."""
    return CompressionConfig("tiny-llama", {
        layer.name: LayerConfig(quant=QuantSpec(GPTQ_BITS[layer.type], default_group_size(layer.in_features),
                                                method="gptq"))
        for layer in session.layers})


class MinMaxRound(QuantHandler):
    """Round to nearest on GPTQ's asymmetric min-max grid (a zero point per group; GPTQ with an identity
    Hessian compensates nothing): a quantiser whose zero points the export cannot write."""

    symmetric = False

    def quantize(self, ctx: LayerContext | None, name: str, matrix: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
        return gptq(matrix, torch.eye(matrix.shape[1]), bits=spec.bits, group_size=spec.group_size,
                    symmetric=False).weight

    def grid(self, ctx: LayerContext, name: str, matrix: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
        return gptq(matrix, torch.eye(matrix.shape[1]), bits=spec.bits, group_size=spec.group_size,
                    symmetric=False).quantized


MIN_MAX = MinMaxRound("minmax")


@pytest.fixture
def asymmetric_method(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(registry.METHODS, ("quant", "minmax"), registry.MethodInfo(
        "quant", "minmax", f"{__name__}:MIN_MAX", "round to nearest, min-max grid", bits=(2, 3, 4, 8)))
    return "minmax"


def config_for(session: ModelSession, kind: str) -> CompressionConfig:
    if kind == "int4":
        return uniform(session, quant=QuantSpec(4, 16))
    if kind == "mixed":
        return mixed_bits(session)
    if kind == "gptq-int4":
        return CompressionConfig("tiny-llama", {layer.name: LayerConfig(quant=QuantSpec(4, 64, method="gptq"))
                                                for layer in session.layers})
    assert kind == "gptq-mixed"
    return gptq_mixed(session)


def applied_weights(session: ModelSession, config: CompressionConfig) -> dict[str, torch.Tensor]:
    with session.applied(config):
        return {name: module.weight.detach().clone() for name, module in session.modules.items()}


def applied_logits(session: ModelSession, config: CompressionConfig, ids: torch.Tensor) -> torch.Tensor:
    with session.applied(config), torch.no_grad():
        return session.model(input_ids=ids).logits


def plain_load(out: Path) -> nn.Module:
    """What a user of transformers and compressed-tensors does, with no slimscout code in the way."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out).eval()


def config_groups(out: Path) -> dict[tuple[int, int, bool], set[str]]:
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    return {(g["weights"]["num_bits"], g["weights"]["group_size"], g["weights"]["symmetric"]): set(g["targets"])
            for g in quant["config_groups"].values()}


def wanted_groups(config: CompressionConfig) -> dict[tuple[int, int, bool], set[str]]:
    """One symmetric group per (bits, group size) of the config."""
    wanted: dict[tuple[int, int, bool], set[str]] = {}
    for name, cfg in config.layers.items():
        assert cfg.quant is not None
        wanted.setdefault((cfg.quant.bits, cfg.quant.group_size, True), set()).add(name)
    return wanted


def assert_loads_bit_for_bit(session: ModelSession, config: CompressionConfig, ids: torch.Tensor, out: Path,
                             expected: dict[str, torch.Tensor]) -> None:
    model = plain_load(out)
    with torch.no_grad():
        loaded_logits = model(input_ids=ids).logits  # the first forward decompresses the packed layers
    for name, weight in expected.items():
        assert torch.equal(model.get_submodule(name).weight, weight), name
    assert torch.allclose(loaded_logits, applied_logits(session, config, ids), atol=1e-5)


def file_keys(out: Path) -> list[str]:
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        return list(fh.keys())


def test_the_vocabularies_agree() -> None:
    assert tuple(DTYPES) == apply_command.DTYPES


@pytest.mark.parametrize("kind", ["int4", "mixed", "gptq-int4", "gptq-mixed"])
def test_quantised_export_loads_with_plain_transformers_bit_for_bit(session: ModelSession, ids: torch.Tensor,
                                                                     tmp_path: Path, kind: str) -> None:
    config = config_for(session, kind)
    expected = applied_weights(session, config)
    if kind.startswith("gptq"):  # the reconstruction, not round-to-nearest, is what gets written
        for name, cfg in config.layers.items():
            assert cfg.quant is not None
            assert not torch.equal(expected[name], fake_quant(session.dense_weight(name), cfg.quant.bits,
                                                              cfg.quant.group_size)), name
    result = export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors")

    groups = config_groups(tmp_path / "out")
    assert groups == wanted_groups(config)
    if kind == "gptq-mixed":
        assert {bits for bits, _, _ in groups} == {3, 4, 8} and {size for _, size, _ in groups} == {64, 128}
    assert not any(key.endswith("zero_point") for key in file_keys(tmp_path / "out"))  # symmetric: none stored

    assert_loads_bit_for_bit(session, config, ids, tmp_path / "out", expected)
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["format"] == "compressed-tensors"
    assert {entry["storage"] for entry in manifest["layers"].values()} == {"packed"}
    assert result.file_bytes == (tmp_path / "out" / "model.safetensors").stat().st_size


def test_an_asymmetric_grid_is_refused_by_name_or_merged(session: ModelSession, ids: torch.Tensor, tmp_path: Path,
                                                         asymmetric_method: str) -> None:
    up, down = f"{L0}.mlp.up_proj", f"{L0}.mlp.down_proj"
    minmax = QuantSpec(4, 16, method=asymmetric_method)
    config = CompressionConfig("tiny-llama", {up: LayerConfig(quant=minmax),
                                              down: LayerConfig(quant=QuantSpec(3, 64, method="gptq"))})
    assert bool((MIN_MAX.grid(session, up, session.dense_weight(up), minmax).zeros != 8).any())  # its own zero points
    with pytest.raises(ExportError, match=rf"layer {up} is quantised by minmax on an asymmetric grid.*--merge"):
        export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors")

    expected = applied_weights(session, config)
    export_compressed(session, config, tmp_path / "merged", export_format="compressed-tensors", merge=True)
    layers = json.loads((tmp_path / "merged" / MANIFEST_NAME).read_text())["layers"]
    assert (layers[up]["storage"], layers[down]["storage"]) == ("dense", "packed")
    assert config_groups(tmp_path / "merged") == {(3, 64, True): {down}}
    assert_loads_bit_for_bit(session, config, ids, tmp_path / "merged", expected)


def test_packed_layers_are_smaller_on_disk_than_float_layers(session: ModelSession, tmp_path: Path) -> None:
    dense = export_compressed(session, CompressionConfig("tiny-llama"), tmp_path / "dense")
    int4 = export_compressed(session, uniform(session, quant=QuantSpec(4, 16)), tmp_path / "int4",
                             export_format="compressed-tensors")
    int8 = export_compressed(session, uniform(session, quant=QuantSpec(8, 16)), tmp_path / "int8",
                             export_format="compressed-tensors")
    # per weight: 32 bits dense; 4 (or 8) bits of code + a 32-bit scale per 16 weights = 6 (or 10) bits;
    # the rest is the file's header (each packed layer adds two tensor names, shapes and offsets)
    saved4, saved8 = dense.file_bytes - int4.file_bytes, dense.file_bytes - int8.file_bytes
    assert saved4 == pytest.approx(session.params_linear * (4 - 0.75), rel=0.02)
    assert saved8 == pytest.approx(session.params_linear * (4 - 1.25), rel=0.02)


def test_sparse_layers_keep_their_exact_zeros(session: ModelSession, tmp_path: Path) -> None:
    config = uniform(session, sparsity=SparsitySpec(0.5, "wanda"))
    expected = applied_weights(session, config)
    export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors")
    model = plain_load(tmp_path / "out")
    for name, weight in expected.items():
        loaded = model.get_submodule(name).weight
        assert torch.equal(loaded, weight)
        assert int((loaded == 0).sum()) == int((weight == 0).sum()) >= weight.numel() // 2


def test_sparse_and_quantised_layers_pack_their_zeros(session: ModelSession, tmp_path: Path) -> None:
    config = uniform(session, sparsity=SparsitySpec(0.5, "wanda"), quant=QuantSpec(8, 16))
    expected = applied_weights(session, config)
    export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors")
    model = plain_load(tmp_path / "out")
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    for name, weight in expected.items():
        assert torch.equal(model.get_submodule(name).weight, weight), name


def test_what_the_format_cannot_hold_is_refused_by_name_or_merged(session: ModelSession, ids: torch.Tensor,
                                                                  tmp_path: Path) -> None:
    layers: dict[str, Any] = {f"{L0}.self_attn.q_proj": {"lowrank": {"rank": 8}},
                              f"{L0}.mlp.up_proj": {"quant": {"bits": 4, "group_size": 16}}}
    config = config_from_dict({"schema": "slimscout.config/v1", "model_id": "tiny-llama", "layers": layers})
    with pytest.raises(ExportError, match=rf"layer {L0}\.self_attn\.q_proj is low rank \(rank 8\).*--merge"):
        export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors")
    assert not (tmp_path / "out").exists()

    ragged = uniform(session, quant=QuantSpec(4, 48))  # 64 inputs are not whole groups of 48
    with pytest.raises(ExportError, match=r"has 64 inputs, not a multiple of its group size 48"):
        export_compressed(session, ragged, tmp_path / "out", export_format="compressed-tensors")
    sdq = uniform(session, quant=QuantSpec(4, 16, "1:8"))
    with pytest.raises(ExportError, match="SDQ"):
        export_compressed(session, sdq, tmp_path / "out", export_format="compressed-tensors")

    export_compressed(session, config, tmp_path / "merged", export_format="compressed-tensors", merge=True)
    manifest = json.loads((tmp_path / "merged" / MANIFEST_NAME).read_text())
    assert manifest["layers"][f"{L0}.self_attn.q_proj"]["storage"] == "dense"
    assert manifest["layers"][f"{L0}.mlp.up_proj"]["storage"] == "packed"
    model = plain_load(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, applied_logits(session, config, ids), atol=1e-5)


def test_sharded_bfloat16_export_reloads_bit_identically(session: ModelSession, tmp_path: Path) -> None:
    layers = {f"{L0}.self_attn.q_proj": {"lowrank": {"rank": 8}}, f"{L0}.mlp.up_proj": {"sparsity": {"ratio": 0.5}}}
    config = config_from_dict({"schema": "slimscout.config/v1", "model_id": "tiny-llama", "layers": layers})
    with session.applied(config):
        written = {name: tensor.to(torch.bfloat16) for name, tensor in session.model.state_dict().items()}
    result = export_compressed(session, config, tmp_path / "out", dtype=torch.bfloat16, max_shard_size="200KB")
    out = tmp_path / "out"
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / shard).is_file() for shard in shards)
    assert result.file_bytes == sum((out / shard).stat().st_size for shard in shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    model = load_compressed(out, dtype=torch.bfloat16)
    loaded = model.state_dict()
    factored = loaded[f"{L0}.self_attn.q_proj.up.weight"] @ loaded[f"{L0}.self_attn.q_proj.down.weight"]
    assert factored.dtype == torch.bfloat16
    for name, tensor in written.items():
        if name.startswith(f"{L0}.self_attn.q_proj"):
            continue  # stored as two factors
        assert torch.equal(loaded[name], tensor), name
    with session.applied(config):
        left, right = session.compressed_factors(f"{L0}.self_attn.q_proj", config.layers[f"{L0}.self_attn.q_proj"])
    assert torch.equal(loaded[f"{L0}.self_attn.q_proj.up.weight"], left.to(torch.bfloat16))
    assert torch.equal(loaded[f"{L0}.self_attn.q_proj.down.weight"], right.to(torch.bfloat16))


def test_a_full_disk_mid_write_leaves_nothing_half_written(session: ModelSession, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.export_ct

    config = uniform(session, quant=QuantSpec(4, 16))
    export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    real = compress.export_ct.save_weights

    def fill_disk(model: nn.Module, directory: Path, **kwargs: Any) -> None:
        real(model, directory, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(compress.export_ct, "save_weights", fill_disk)
    with pytest.raises(OSError, match="No space left"):
        export_compressed(session, mixed_bits(session), tmp_path / "out", export_format="compressed-tensors",
                          force=True)
    with pytest.raises(OSError, match="No space left"):
        export_compressed(session, config, tmp_path / "new", export_format="compressed-tensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory, no "new"
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_model_card_states_model_budget_allocation_quality_and_command(session: ModelSession,
                                                                       tmp_path: Path) -> None:
    config = mixed_bits(session)
    measured = CardMeasurement("lee-news", "holdout", 2048, ppl=31.5, dense_ppl=30.25)
    export_compressed(session, config, tmp_path / "out", export_format="compressed-tensors", measurement=measured,
                      command="slimscout apply --model tiny-llama --config c.json --out out")
    card = (tmp_path / "out" / CARD_NAME).read_text()
    assert "base_model: tiny-llama" in card
    assert f"{session.cost(config).params:,} of {session.params_linear:,} parameters kept" in card
    assert "| dense `tiny-llama` | 30.25 |" in card and "| this model | 31.50 (1.04x dense) |" in card
    assert "2,048 tokens of the `holdout` split of `lee-news`" in card
    assert "| down | 4 |" in card and "int8/g16 ×4" in card and "int4/g16 ×4" in card
    assert "slimscout apply --model tiny-llama --config c.json --out out" in card
    export_compressed(session, config, tmp_path / "bare")
    assert "No perplexity was measured" in (tmp_path / "bare" / CARD_NAME).read_text()


def test_cli_apply_compressed_tensors_then_evaluate(session: ModelSession, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    mixed_bits(session).save(tmp_path / "config.json")
    out = tmp_path / "out"
    assert main(["apply", "--model", "tiny-llama", "--config", str(tmp_path / "config.json"), "--out", str(out),
                 "--format", "compressed-tensors", "--eval-tokens", "128", "--json"]) == 0
    applied = json.loads(capsys.readouterr().out)
    assert applied["format"] == "compressed-tensors" and applied["holdout_tokens"] > 0
    card = (out / CARD_NAME).read_text()
    assert f"| this model | {applied['holdout_ppl']:.2f}" in card
    assert main(["evaluate", "--model", str(out), "--split", "holdout", "--tokens", "128", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["ppl"] == pytest.approx(applied["holdout_ppl"], rel=1e-4)
