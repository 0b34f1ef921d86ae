"""SoftLMs: learned per-layer ranks meet the budget exactly, stay within bounds, are cached, and are
learned (they move away from the uniform allocation they start from)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from compress.baselines import build_baseline, softlms, uniform
from compress.budget import BUDGET_TOLERANCE
from compress.catalog import load_model
from compress.config import CompressionConfig
from compress.session import ModelSession
from compress.softlms import SoftRankLinear, log_sigma, uniform_threshold
from slimscout.cli import main

STEPS, TOKENS = 6, 64


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path_factory.mktemp("softlms-cache"))


def ranks(config: CompressionConfig) -> dict[str, int]:
    return {name: cfg.lowrank.rank for name, cfg in config.layers.items() if cfg.lowrank is not None}


def test_budget_met_and_ranks_within_bounds(session: ModelSession) -> None:
    result = softlms(session, 0.5, ["svd-whitened"], steps=STEPS, tokens=TOKENS)
    cost = session.cost(result.config)  # validates ranks against the model, counts exactly
    assert cost.params == result.allocation.params_kept
    assert abs(result.allocation.keep_ratio - 0.5) <= BUDGET_TOLERANCE * 0.5
    assert ranks(result.config), "a keep-0.5 allocation factors layers"
    for name, rank in ranks(result.config).items():
        layer = session.by_name[name]
        assert rank >= 1 and rank * (layer.in_features + layer.out_features) < layer.params
    assert result.config.meta["method"] == "baseline:softlms"


def test_ranks_are_learned_not_uniform(session: ModelSession) -> None:
    result = softlms(session, 0.5, ["svd-whitened"], steps=STEPS, tokens=TOKENS)
    base = uniform(session, 0.5, ["svd-whitened"])
    assert ranks(result.config) != ranks(base.config)
    history = result.details["history"]
    assert isinstance(history, list) and len(history) == STEPS
    start = {layer.name: uniform_threshold(log_sigma(session.svd("svd-whitened")[layer.name]),
                                           int(0.5 * layer.params // (layer.in_features + layer.out_features)))
             for layer in session.layers}
    thresholds = result.details["thresholds"]
    assert isinstance(thresholds, dict)
    moved = [thresholds[name] - start[name] for name in start]  # common shifts only hold the budget
    assert max(moved) - min(moved) > 0.05


def test_cached_per_budget_and_settings(session: ModelSession) -> None:
    first = softlms(session, 0.6, ["svd-whitened"], steps=STEPS, tokens=TOKENS)
    assert first.details["cached"] is False and first.evaluations == STEPS
    assert first.details["forward_passes"] == 2 * STEPS and first.details["backward_passes"] == STEPS
    again = build_baseline("softlms", session, 0.6, ["svd-whitened"], steps=STEPS, tokens=TOKENS)
    assert again.details["cached"] is True and again.evaluations == 0
    assert again.config.to_dict() == first.config.to_dict()
    other = softlms(session, 0.6, ["svd-whitened"], steps=STEPS + 1, tokens=TOKENS)
    assert other.details["cached"] is False
    assert len(list(session.cache_dir.glob("softlms-*.json"))) >= 2


def test_needs_a_lowrank_operator(session: ModelSession) -> None:
    with pytest.raises(ConfigError, match="low-rank"):
        softlms(session, 0.5, ["wanda"], steps=STEPS, tokens=TOKENS)


def test_soft_rank_linear_is_the_factorisation(session: ModelSession) -> None:
    """With the threshold far below every σ, the stand-in computes the (whitened-SVD) dense layer."""
    name = session.layers[0].name
    factors = session.svd("svd-whitened")[name]
    module = SoftRankLinear(factors, None, threshold=-100.0, temperature=0.25)
    x = torch.randn(3, session.by_name[name].in_features)
    torch.testing.assert_close(module(x), x @ session.dense_weight(name).T, rtol=1e-3, atol=1e-4)
    module.threshold.data.fill_(100.0)  # above every σ: everything clipped
    assert float(module(x).abs().max()) < 1e-6


def test_cli_writes_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "softlms.json"
    code = main(["baseline", "--model", "tiny-llama", "--method", "softlms", "--operators", "svd-whitened",
                 "--budget", "0.5", "--steps", "3", "--tokens", "64", "--out", str(out), "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "softlms" and payload["forward_passes"] == 6 and payload["cached"] is False
    assert abs(payload["keep_ratio"] - 0.5) <= BUDGET_TOLERANCE * 0.5
    assert json.loads(out.read_text())["meta"]["method"] == "baseline:softlms"
