"""Recovery by distillation: the structure of the config survives training, training helps, a killed
run resumes to the same result, and the output loads like any export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from common.errors import ConfigError
from compress.catalog import load_model
from compress.config import CompressionConfig, config_from_dict
from compress.export import CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME, LowRankLinear, load_compressed
from compress.lr_schedule import learning_rate
from compress.ops import fake_quant, sdq
from compress.recover import (
    CHECKPOINT_NAME,
    Progress,
    RecoverSettings,
    Sampler,
    _Run,
    distillation_loss,
    fitted_horizon,
    recover,
)
from compress.recover_modules import FactoredLinear, MaskedLinear
from compress.session import ModelSession
from slimscout.cli import main

L0 = "model.layers.0"
L1 = "model.layers.1"
# tiny-llama: q/o 64x64, k/v 32x64, gate/up 128x64, down 64x128 (out x in)
MIX: dict[str, Any] = {
    f"{L0}.self_attn.q_proj": {"lowrank": {"rank": 8}, "sparsity": {"ratio": 0.25, "score": "wanda"},
                               "quant": {"bits": 8, "group_size": 8}},  # factored, pruned, quantized
    f"{L0}.mlp.gate_proj": {"lowrank": {"rank": 16}, "quant": {"bits": 4, "group_size": 16}},  # factored
    f"{L0}.self_attn.o_proj": {"lowrank": {"rank": 40},  # 40 * 128 > 64 * 64: stored dense
                               "sparsity": {"ratio": 0.5, "score": "magnitude"}},
    f"{L0}.mlp.up_proj": {"sparsity": {"ratio": 0.6, "score": "wanda"}},
    f"{L1}.self_attn.k_proj": {"sparsity": {"ratio": 0.5, "score": "magnitude", "pattern": "2:4"}},
    f"{L1}.mlp.up_proj": {"sparsity": {"ratio": 0.3}, "quant": {"bits": 8, "group_size": 64}},
    f"{L1}.mlp.down_proj": {"quant": {"bits": 4, "group_size": 32}},
    f"{L1}.self_attn.q_proj": {"quant": {"bits": 8, "group_size": 16, "outliers": "1:8"}},  # SDQ
    f"{L1}.self_attn.v_proj": {"lowrank": {"rank": 4, "method": "svd"}},
    f"{L1}.mlp.gate_proj": {"sparsity": {"ratio": 0.5, "score": "sparsegpt"}},  # reconstructed, not ranked
}
FAST = RecoverSettings(steps=4, lr=1e-3, tokens=64, eval_every=2, eval_tokens=128)


def make_config(layers: dict[str, Any], model_id: str = "tiny-llama") -> CompressionConfig:
    return config_from_dict({"schema": "slimscout.config/v1", "model_id": model_id, "layers": layers})


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path_factory.mktemp("recover-cache"))


def stored(module: nn.Module) -> list[torch.Tensor]:
    if isinstance(module, LowRankLinear):
        return [module.up.weight.detach(), module.down.weight.detach()]
    assert isinstance(module, nn.Linear)
    return [module.weight.detach()]


def before_weights(session: ModelSession, config: CompressionConfig) -> dict[str, list[torch.Tensor]]:
    """What the export of the config (untrained) stores per layer: the reference for the structure."""
    from compress.export import is_factored

    out = {}
    for name, cfg in config.layers.items():
        if is_factored(session.by_name[name], cfg):
            left, right = session.compressed_factors(name, cfg)
            out[name] = [left, right]
        else:
            out[name] = [session.compressed_weight(name, cfg)]
    return out


def on_grid(weight: torch.Tensor, cfg_quant: dict[str, Any]) -> bool:
    """Quantizing again changes nothing (up to float rounding of the scale). Not for SDQ: its outliers are
    re-chosen from the quantized values, so a second pass need not be the identity."""
    again = fake_quant(weight, cfg_quant["bits"], cfg_quant["group_size"])
    return torch.allclose(again, weight, rtol=0, atol=1e-6 * float(weight.abs().max()))


def latent_quantized(module: nn.Module, cfg_quant: dict[str, Any]) -> list[torch.Tensor]:
    """The config's quantization of a trained module's latent (masked) weights."""
    bits, group = cfg_quant["bits"], cfg_quant["group_size"]
    if isinstance(module, FactoredLinear):
        latents = [module.up.weight * (1 if module.up_mask is None else module.up_mask),
                   module.down.weight * (1 if module.down_mask is None else module.down_mask)]
    else:
        assert isinstance(module, MaskedLinear)
        latents = [module.weight * (1 if module.mask is None else module.mask)]
    outliers = cfg_quant.get("outliers")
    if outliers:
        n, m = (int(x) for x in outliers.split(":"))
        return [sdq(w.detach(), bits, group, n, m) for w in latents]
    return [fake_quant(w.detach(), bits, group) for w in latents]


def test_extra_corpora_join_the_training_text_each_step_drawing_one(session: ModelSession, tmp_path: Path) -> None:
    """Windows come from the dataset's calibration split or the extra corpus's, about half each; never
    from a split that is not calibration (the extra corpus's later documents never appear)."""
    extra = tmp_path / "zebras.txt"  # 5 documents: the calibration split is the first (20%)
    extra.write_text("\n\n".join([" ".join(["zebra"] * 300)] + [" ".join(["okapi"] * 300)] * 4), encoding="utf-8")
    sampler = Sampler(session, RecoverSettings(tokens=16, seed=3, train_extra=(str(extra),)))
    zebra = set(session.loaded.tokenizer(" zebra zebra", add_special_tokens=False)["input_ids"])
    okapi = set(session.loaded.tokenizer(" okapi okapi", add_special_tokens=False)["input_ids"])
    sources = []
    for _ in range(60):
        window = set(sampler.next()[0].tolist())
        assert not window & (okapi - zebra)
        sources.append(window <= zebra | set(session.loaded.tokenizer("zebra")["input_ids"]))
    assert 15 <= sum(sources) <= 45


def test_extra_corpora_must_differ_from_the_dataset() -> None:
    with pytest.raises(ConfigError, match="train_extra"):
        RecoverSettings(train_extra=("lee-news",))
    with pytest.raises(ConfigError, match="train_extra"):
        RecoverSettings(train_extra=("enwiki", "enwiki"))


def test_each_step_trains_at_the_scheduled_rate(session: ModelSession) -> None:
    run = _Run(session, make_config(MIX), RecoverSettings(steps=6, lr=1e-3, warmup=2, tokens=64, eval_tokens=128))
    rates = []
    for _ in range(6):
        run.train_step()
        rates.append(run.optimizer.param_groups[0]["lr"])
    assert rates == [learning_rate(1e-3, "cosine", 2, step, 6) for step in range(6)]
    assert rates[0] == pytest.approx(0.5e-3) and rates[1] < 1e-3 and rates[-1] < rates[-2]
    factor_group = run.optimizer.param_groups[1]  # the low-rank factors, at lr x factor_lr_scale
    factored = {id(p) for name in (f"{L0}.self_attn.q_proj", f"{L0}.mlp.gate_proj", f"{L1}.self_attn.v_proj")
                for p in run.layers[name].parameters()}
    assert {id(p) for p in factor_group["params"]} == factored
    assert factor_group["lr"] == pytest.approx(rates[-1] * 0.2)


def test_bf16_autocast_trains_the_float32_weights_and_keeps_the_zeros(session: ModelSession) -> None:
    layers = {name: MIX[name] for name in (f"{L0}.mlp.up_proj", f"{L1}.self_attn.k_proj")}
    settings = RecoverSettings(steps=4, lr=1e-2, tokens=64, eval_tokens=128, bf16=True)
    config = make_config(layers)
    run = _Run(session, config, settings)
    before = {name: p.detach().clone() for name, p in run.params.items()}
    for _ in range(4):
        run.train_step()
    assert all(p.dtype == torch.float32 for p in run.params.values())
    assert any(not torch.equal(before[name], p) for name, p in run.params.items())
    model = run.baked()
    for name in layers:
        weight = model.get_submodule(name).weight
        assert weight.dtype == torch.float32
        assert int((weight != 0).sum()) == int((session.compressed_weight(name, config.layers[name]) != 0).sum())


def test_training_keeps_zeros_ranks_and_grids(session: ModelSession) -> None:
    config = make_config(MIX)
    reference = before_weights(session, config)
    run = _Run(session, config, RecoverSettings(lr=1e-2, tokens=64, eval_tokens=128))
    for _ in range(3):
        run.train_step()
    quantized = {name: latent_quantized(run.layers[name], MIX[name]["quant"]) for name in MIX if "quant" in MIX[name]}
    model = run.baked()
    for name, cfg in config.layers.items():
        module = model.get_submodule(name)
        spec = MIX[name]
        if isinstance(module, LowRankLinear):
            assert module.rank == cfg.lowrank.rank  # type: ignore[union-attr]
        after = stored(module)
        assert [w.shape for w in after] == [w.shape for w in reference[name]], name
        changed = False
        for old, new in zip(reference[name], after, strict=True):
            changed |= not torch.equal(old, new)
            if "sparsity" in spec:
                # exactly the same positions are zero: every pruned weight stays zero, every kept one
                # is still non-zero, so the non-zero count per layer is unchanged
                if "quant" not in spec:
                    assert torch.equal(new != 0, old != 0), name
                    assert int((new != 0).sum()) == int((old != 0).sum()), name
                else:  # a kept weight may round to 0 on the grid: the support can only shrink
                    assert not bool((new[old == 0] != 0).any()), name
            if "quant" in spec and spec["quant"].get("outliers") is None:
                assert on_grid(new, spec["quant"]), name
        if "quant" in spec:  # what is stored is the grid value of the trained latent weight, bit for bit
            assert all(torch.equal(q, w) for q, w in zip(quantized[name], after, strict=True)), name
        assert changed, f"{name} was not trained"
    # the 2:4 layer is still exactly 2:4
    nm = stored(model.get_submodule(f"{L1}.self_attn.k_proj"))[0]
    assert torch.equal((nm != 0).reshape(nm.shape[0], -1, 4).sum(-1), torch.full((nm.shape[0], nm.shape[1] // 4), 2))


def test_student_starts_as_the_config_applied(session: ModelSession) -> None:
    config = make_config(MIX)
    run = _Run(session, config, FAST)
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    with session.applied(config), torch.no_grad():
        expected = session.model(input_ids=ids).logits
    with torch.no_grad():
        got = run.student(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert isinstance(run.student.get_submodule(f"{L0}.mlp.gate_proj"), FactoredLinear)
    assert isinstance(run.student.get_submodule(f"{L0}.mlp.up_proj"), MaskedLinear)
    embeddings = [m for m in run.student.modules() if isinstance(m, nn.Embedding)]
    assert embeddings and not any(p.requires_grad for m in embeddings for p in m.parameters())


def test_distillation_lowers_the_loss(session: ModelSession) -> None:
    config = make_config({layer.name: {"sparsity": {"ratio": 0.8, "score": "wanda"}} for layer in session.layers})
    run = _Run(session, config, RecoverSettings(lr=1e-3, warmup=0, tokens=64, eval_tokens=128))
    gen = torch.Generator().manual_seed(5)
    starts = torch.randint(0, run.sampler.streams[0].numel() - 64, (4,), generator=gen).tolist()
    held = torch.stack([run.sampler.streams[0][s : s + 64] for s in starts])

    def loss() -> float:
        with torch.no_grad():
            return float(distillation_loss(run.student, session.model, held, causal=True, hidden_weight=0.5))

    before = loss()
    run.settings = RecoverSettings(lr=1e-3, warmup=0, tokens=64, eval_tokens=128, hidden_weight=0.5)
    for _ in range(8):
        run.train_step()
    assert loss() < 0.9 * before


class Killed(RuntimeError):
    pass


def test_a_killed_run_resumes_to_the_same_result(session: ModelSession, tmp_path: Path) -> None:
    config = make_config(MIX)
    settings = RecoverSettings(steps=5, lr=1e-3, tokens=64, eval_every=2, eval_tokens=128)
    straight = recover(session, config, tmp_path / "straight", settings=settings)

    def kill_at_3(progress: Progress) -> None:
        if progress.step == 3:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        recover(session, config, out, settings=settings, on_progress=kill_at_3)
    checkpoint = tmp_path / "killed.recover-checkpoint" / CHECKPOINT_NAME
    assert checkpoint.is_file() and not out.exists()
    with pytest.raises(ConfigError, match="--resume"):  # never reused or overwritten silently
        recover(session, config, out, settings=settings)
    with pytest.raises(ConfigError, match="another model, config or settings"):
        recover(session, config, out, settings=RecoverSettings(steps=6, lr=1e-3, tokens=64, eval_every=2,
                                                              eval_tokens=128), resume=True)
    resumed = recover(session, config, out, settings=settings, resume=True)
    assert resumed.resumed_from == 2
    assert not checkpoint.parent.exists()  # removed once the export is written
    assert resumed.history == straight.history
    assert (resumed.best_step, resumed.after) == (straight.best_step, straight.after)
    a, b = load_file(str(tmp_path / "straight" / WEIGHTS_NAME)), load_file(str(out / WEIGHTS_NAME))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_time_budget_stops_training_evaluated_with_the_best_state_written(session: ModelSession,
                                                                           tmp_path: Path) -> None:
    settings = RecoverSettings(steps=50, lr=1e-3, tokens=64, eval_every=20, eval_tokens=128, max_minutes=1e-9)
    result = recover(session, make_config(MIX), tmp_path / "timed", settings=settings)
    assert (result.steps_run, result.stopped_early) == (1, True)
    assert [h["step"] for h in result.history] == [0.0, 1.0]  # the last step evaluated before stopping
    meta = json.loads((tmp_path / "timed" / CONFIG_NAME).read_text())["meta"]["recovered"]
    assert meta["steps_run"] == 1 and meta["search_after"] == result.after


def test_the_steps_that_fit_a_time_budget_are_the_schedules_steps() -> None:
    assert fitted_horizon(1000, 10, 60.0, 600.0) == 100  # 6 s a step: 90 more fit
    assert fitted_horizon(50, 10, 60.0, 600.0) == 50  # never past --steps
    assert fitted_horizon(1000, 10, 700.0, 600.0) == 11  # over budget: the step under way is the last
    assert fitted_horizon(1000, 0, 0.0, 600.0) == 1000  # nothing measured yet


def test_under_a_time_budget_the_cosine_ends_when_the_time_does(session: ModelSession, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that advances 10 s a training step and a 65-second budget: at steps 2 and 4 the schedule is
    refitted to 6 steps, and the run ends there, its rate decayed, though --steps says 1,000."""
    clock = [0.0]
    monkeypatch.setattr("compress.recover.time.perf_counter", lambda: clock[0])
    step = _Run.train_step

    def timed(run: _Run) -> float:
        clock[0] += 10.0
        return step(run)

    monkeypatch.setattr(_Run, "train_step", timed)
    settings = RecoverSettings(steps=1000, lr=1e-3, warmup=0, tokens=64, eval_every=2, eval_tokens=128,
                               max_minutes=65 / 60)
    result = recover(session, make_config(MIX), tmp_path / "fitted", settings=settings)
    assert (result.steps_run, result.stopped_early) == (6, False)
    assert [h["step"] for h in result.history] == [0.0, 2.0, 4.0, 6.0]
    meta = json.loads((tmp_path / "fitted" / CONFIG_NAME).read_text())["meta"]["recovered"]
    assert (meta["steps"], meta["schedule_steps"], meta["steps_run"]) == (1000, 6, 6)


def test_output_loads_like_an_export_and_records_the_recovery(session: ModelSession, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(MIX)
    out = tmp_path / "recovered"
    result = recover(session, config, out, settings=FAST)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["layers"][f"{L0}.mlp.gate_proj"]["storage"] == "factored"
    assert manifest["layers"][f"{L0}.self_attn.o_proj"]["storage"] == "dense"
    meta = json.loads((out / CONFIG_NAME).read_text())["meta"]["recovered"]
    assert meta["steps_run"] == 4 and meta["lr"] == 1e-3 and meta["tokens_per_step"] == 64
    assert meta["search_before"] == result.before and meta["search_after"] == result.after
    assert {"ppl", "kl"} <= set(result.before)
    # the evaluate command's loader (compress.catalog.load_model on a directory) computes the best state
    loaded = load_model(str(out))
    assert isinstance(loaded.model.get_submodule(f"{L0}.self_attn.q_proj"), LowRankLinear)
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits,
                                   load_compressed(out)(input_ids=ids).logits)
    assert main(["evaluate", "--model", str(out), "--split", "holdout", "--tokens", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] > 0


def test_encoder_recovery_keeps_sparsity_and_reports_cosine(tmp_path: Path) -> None:
    session = ModelSession(load_model("tiny-bert"), cache_dir=tmp_path / "cache")
    names = [layer.name for layer in session.layers][:4]
    config = make_config({name: {"sparsity": {"ratio": 0.5, "score": "wanda"}} for name in names}, "tiny-bert")
    reference = before_weights(session, config)
    settings = RecoverSettings(steps=3, lr=1e-2, tokens=256, eval_every=3, eval_tokens=256)
    result = recover(session, config, tmp_path / "bert", settings=settings)
    assert set(result.before) == {"cosine"} and 0 < result.after["cosine"] <= 1
    model = load_compressed(tmp_path / "bert")
    for name in names:
        new = stored(model.get_submodule(name))[0]
        assert torch.equal(new != 0, reference[name][0] != 0), name


def test_cli_recover_writes_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(make_config(MIX).to_json())
    out = tmp_path / "cli-out"
    argv = ["recover", "--model", "tiny-llama", "--config", str(tmp_path / "config.json"), "--out", str(out),
            "--steps", "2", "--tokens", "64", "--eval-every", "1", "--eval-tokens", "128", "--lr", "1e-3",
            "--train-extra", "enwiki", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["steps_run"] == 2 and payload["peak_rss_mb"] > 0
    assert "step 1/2" in captured.err and "search" in captured.err
    assert (out / WEIGHTS_NAME).is_file()
    assert json.loads((out / MANIFEST_NAME).read_text())["recovered"]["train_extra"] == ["enwiki"]
    with pytest.raises(SystemExit):
        main([*argv[:-1], "--steps", "0"])
