"""``slimscout search`` over a list of budgets: one real study per budget on the tiny test model."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.test_cli import assert_one_line_error, slimscout


def test_a_list_of_budgets_runs_one_study_per_budget_and_reports_each(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = slimscout("search", "--model", "tiny-llama", "--budget", "0.4,0.6", "--n-trials", "5", "--tokens", "256",
                       "--holdout-tokens", "256", "--sensitivity-tokens", "128", "--storage", url,
                       "--study", "group", "--out", str(tmp_path / "best.json"), "--json", timeout=1200)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["group"] == "group" and summary["budget_field"] == "budget" and summary["storage"] == url
    assert [entry["budget"] for entry in summary["per_budget"]] == [0.4, 0.6]
    for entry in summary["per_budget"]:
        assert entry["study"] == f"group-{entry['budget']}" and entry["evaluations"] == 5 and entry["seconds"] > 0
        assert entry["best"]["keep_ratio"] == pytest.approx(entry["budget"], abs=0.01)
        assert entry["holdout"]["tokens"] == 256 and entry["holdout"]["best"]["kl"] >= 0.0
        config = json.loads((tmp_path / f"best-{entry['budget']}.json").read_text())
        assert config["layers"]  # each budget's winner, written beside the others
    # Each budget is an ordinary study with its own spec, in the one storage.
    stored = {s.study_name: s.user_attrs["slimscout"]["budget"] for s in optuna.get_all_study_summaries(url)}
    assert stored == {"group-0.4": 0.4, "group-0.6": 0.6}
    low, high = summary["per_budget"]
    assert high["holdout"]["best"]["kl"] < low["holdout"]["best"]["kl"]  # keeping more damages less


@pytest.mark.parametrize(("budget", "needle"), [
    (["--budget", "0.6,0.4"], "budget.1: budgets must be sorted ascending and distinct (0.6 then 0.4)"),
    (["--budget", "0.4,0.4"], "budget.1: budgets must be sorted ascending and distinct"),
    (["--budget", "0.4,1.5"], "in (0, 1]; got 1.5"),
    (["--budget-bits", "3.5,17", "--operators", "gptq"], "bits per weight must be in (0, 16], got 17"),
])
def test_a_bad_list_of_budgets_is_one_line(budget: list[str], needle: str) -> None:
    assert_one_line_error(slimscout("search", "--model", "tiny-llama", *budget), needle)
