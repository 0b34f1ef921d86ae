"""The benchmark runner's plan and the BENCHMARKS.md renderer (on synthetic job records)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.run import PLANS, plan_jobs


def _env() -> dict[str, Any]:
    return {"date": "2026-11-23", "cpu": "test cpu", "cores": 2, "load_avg_1m": 0.5, "python": "3.11",
            "commit": "abc", "torch": "2.13.0", "transformers": "x", "optuna": "y", "xgboost": "z"}


def _search(strategy: str, values: list[float], best_ppl: float) -> dict[str, Any]:
    holdout = {"dense": {"ppl": 30.0}, "best": {"ppl": best_ppl}, "uniform": {"ppl": 200.0},
               "owl": {"ppl": 220.0}, "sensitivity": {"ppl": 150.0}, "tokens": 2048}
    return {"part": "quality", "kwargs": {"operators": ["wanda"], "budget": 0.4, "strategy": strategy, "seed": 0,
                                          "trials": len(values), "tokens": 512, "holdout_tokens": 2048},
            "result": {"values": values, "summary": {"holdout": holdout, "predictor": None},
                       "cost": {"trials": len(values), "forward_s": 8.0, "apply_s": 1.0, "in_trial_s": 9.0,
                                "span_s": 10.0}},
            "wall_s": 60.0, "env": _env(), "load_avg_1m_after": 1.0}


def test_plans_have_unique_job_ids() -> None:
    for name, plan in PLANS.items():
        ids = [job.id for job in plan_jobs(name, plan)]
        assert len(ids) == len(set(ids))
        assert {job.part for job in plan_jobs(name, plan)} >= {"cost", "quality", "predictor", "scale", "speed",
                                                               "encoder"}


def test_render_fills_tables_and_keeps_the_hand_written_reading(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nintro\n\n{report.BEGIN}\nstale table\n{report.END}\n\n## Reading\n\nmine\n")
    results = {"quick": {"tpe": _search("tpe", [3.0, 2.0, 1.0], 160.0),
                         "guided": _search("guided", [3.0, 0.9, 0.8], 100.0),
                         "random": _search("random", [3.0, 2.5, 2.4], 180.0),
                         "cost": _search("random", [3.0, 2.9], 180.0) | {"part": "cost"}},
               "full": {}}
    monkeypatch.setattr(report, "BENCHMARKS", path)
    report.render(results, path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith("## Reading\n\nmine\n")
    assert "stale table" not in text
    assert "| wanda 0.4 | 30.00 | 200.0 | 220.0 | 150.0 | 180.0 | 160.0 | **100.0** | 0.50x | 0.67x | 3 |" in text
    # Plain TPE ends at 1.0; guided is at 0.9 by its second evaluation.
    assert "reached by slimscout at evaluation **2** of 3" in text
    assert "| wanda 0.4 tpe s0 | 512 | 3 | 2.67 | 0.33 | 3.33 | 20% | 0.5–1.0 | abc |" in text
    assert "| wanda 0.4 random s0 | 512 | 2 | 4.00 | 0.50 | 5.00 | 20% |" in text  # a cost-only study
    assert (tmp_path / "efficiency-quick.png").stat().st_size > 0
    assert "## Suite `full`\n\nNot run yet." in text
