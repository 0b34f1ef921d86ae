"""Predictor-guided search on a tiny model: warm start from an earlier study in the same storage."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from compress.budget import BUDGET_TOLERANCE
from search.context import Workbench
from search.runner import run_search
from search.spec import StudySpec
from search.study import load_study

SPEC = dict(model_id="tiny-llama", operators=["wanda"], eval_tokens=128, holdout_tokens=128,
            baselines=["uniform"], strategy="guided", prune=False)


def _screened_before(url: str, name: str, number: int) -> bool:
    study, _ = load_study(url, name)
    return any(t.user_attrs.get("source") == "predictor" and t.number < number for t in study.get_trials())


def test_warm_start_uses_earlier_comparable_studies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    bench = Workbench()
    run_search(StudySpec(**SPEC | {"budget": 0.6, "n_trials": 12, "strategy": "tpe"}),  # type: ignore[arg-type]
               storage_url=url, study_name="earlier", bench=bench)
    # Cold (no warm start), and with another tokens count it measures something else: never a prior.
    run_search(StudySpec(**SPEC | {"budget": 0.5, "n_trials": 10, "eval_tokens": 64}),  # type: ignore[arg-type]
               storage_url=url, study_name="cold", bench=bench)
    later = StudySpec(**SPEC | {"budget": 0.5, "n_trials": 10, "warm_start": True})  # type: ignore[arg-type]
    run_search(later, storage_url=url, study_name="later", bench=bench)

    warm_report = load_study(url, "later")[0].user_attrs["predictor"]
    assert warm_report["warm_start"] == {"studies": ["earlier"], "pairs": 12, "used": True}
    assert "warm_start" not in load_study(url, "cold")[0].user_attrs["predictor"]
    # With a prior, screening starts after two measured trials (cold: after n_init = 4).
    assert _screened_before(url, "later", 3)
    assert not _screened_before(url, "cold", 4)
    # Screening never enqueues a config off the budget.
    done = [t for name in ("later", "cold") for t in load_study(url, name)[0].get_trials(states=(TrialState.COMPLETE,))]
    screened = [t for t in done if t.user_attrs["source"] == "predictor"]
    assert screened
    assert all(abs(t.user_attrs["keep_ratio"] - 0.5) <= BUDGET_TOLERANCE * 0.5 for t in screened)
