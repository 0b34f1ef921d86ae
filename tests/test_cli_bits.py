"""Budgets in bits from the CLI: baseline --budget-bits, evaluate's bits_per_weight, a whole search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import assert_one_line_error, slimscout


def test_a_uniform_gptq_baseline_at_a_bits_budget_evaluates_at_those_bits(tmp_path: Path) -> None:
    out = tmp_path / "gptq.json"
    result = slimscout("baseline", "--model", "tiny-llama", "--method", "uniform", "--operator", "gptq",
                       "--budget-bits", "3.5", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["bits_per_weight"] == pytest.approx(3.5, rel=0.005)
    config = json.loads(out.read_text())
    assert {layer["quant"]["method"] for layer in config["layers"].values()} == {"gptq"}
    assert config["meta"]["bits_per_weight"] == payload["bits_per_weight"]
    evaluated = slimscout("evaluate", "--model", "tiny-llama", "--config", str(out), "--tokens", "256", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["bits_per_weight"] == payload["bits_per_weight"]
    assert metrics["timing"]["apply_s"] > 0
    assert metrics["keep_ratio"] == 1.0


def test_the_budget_kind_must_fit_the_operators(tmp_path: Path) -> None:
    out = str(tmp_path / "x.json")
    base = ("baseline", "--model", "tiny-llama", "--method", "uniform", "--out", out)
    assert_one_line_error(slimscout(*base, "--operator", "wanda", "--budget-bits", "4"), "quantizers only")
    assert_one_line_error(slimscout(*base, "--operator", "gptq", "--budget", "0.5"), "parameter-reducing")
    both = slimscout(*base, "--operator", "gptq", "--budget", "0.5", "--budget-bits", "4")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.slow
def test_a_mixed_precision_search_runs_end_to_end(tmp_path: Path) -> None:
    best = tmp_path / "best.json"
    result = slimscout("search", "--model", "tiny-llama", "--budget-bits", "3.5", "--operators", "gptq",
                       "--n-trials", "6", "--tokens", "256", "--holdout-tokens", "256", "--sensitivity-tokens", "128",
                       "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(best), "--json", timeout=1200)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["evaluations"] == 6
    assert set(summary["baselines"]) == {"uniform", "sensitivity"}  # OWL allocates sparsity: not for bits
    for measured in (summary["best"], *summary["baselines"].values()):
        assert measured["bits_per_weight"] == pytest.approx(3.5, rel=0.005)
    config = json.loads(best.read_text())
    assert {layer["quant"]["method"] for layer in config["layers"].values()} == {"gptq"}
    assert len({layer["quant"]["bits"] for layer in config["layers"].values()}) > 1  # mixed precision
