"""The recovery-aware objective (``kl-recovered``): a candidate is measured on plain KL chunk by chunk
(and pruned on it), and only one that survives is distilled briefly and measured again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from common.errors import ConfigError
from search.runner import run_search
from search.spec import StudySpec
from tests.search._studies import SPEC, sqlite_url, trials


def test_kl_recovered_is_for_causal_lms_only() -> None:
    assert StudySpec(model_id="tiny-llama", budget=0.5, objective="kl-recovered").recover_trial_steps == 8
    with pytest.raises(ConfigError, match="does not apply to tiny-bert"):
        StudySpec.build(model_id="tiny-bert", budget=0.5, objective="kl-recovered")


@pytest.mark.slow
def test_only_candidates_that_survive_the_plain_kl_pay_for_the_distillation(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.recover

    distilled: list[int] = []
    distil = compress.recover.distil

    def counted(session: Any, config: Any, settings: Any) -> Any:
        distilled.append(settings.steps)
        return distil(session, config, settings)

    monkeypatch.setattr(compress.recover, "distil", counted)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)  # every sampled candidate trails
    spec = StudySpec(**SPEC | {"n_trials": 3, "eval_tokens": 1024, "strategy": "random", "baselines": ["uniform"],
                               "objective": "kl-recovered", "recover_trial_steps": 2})
    url = sqlite_url(tmp_path)
    run_search(spec, storage_url=url, study_name="recovered")
    seed, *sampled = trials(url, "recovered")

    # Sampled candidates were pruned on plain KL after the first 512-token chunk, before any distillation.
    assert [t.state for t in sampled] == [TrialState.PRUNED] * 2
    assert all(len(t.intermediate_values) == 1 and "recovered" not in t.user_attrs for t in sampled)
    # The seed is measured fully: plain KL streamed (what the pruner compares across trials), then distilled.
    assert seed.state == TrialState.COMPLETE and seed.user_attrs["source"] == "baseline:uniform"
    assert distilled == [2]
    recovered = seed.user_attrs["recovered"]
    assert recovered["steps"] == 2 and recovered["seconds"] > 0
    assert seed.intermediate_values[1] == seed.user_attrs["kl"]  # the streamed values are plain KL
    assert seed.value == recovered["kl"] != seed.user_attrs["kl"]  # the objective is the KL after distillation


def test_a_trial_the_reaper_finished_mid_measurement_is_given_up_and_the_worker_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starved heartbeats on a crowded machine let the reaper fail a trial that is still being measured;
    its next report raises UpdateFinishedTrialError. The worker must not crash on it."""
    report = optuna.trial.Trial.report
    reaped: list[int] = []

    def reaped_once(self: optuna.trial.Trial, value: float, step: int) -> None:
        if not reaped:
            reaped.append(self.number)
            self.storage.set_trial_state_values(self._trial_id, TrialState.FAIL)  # what the reaper does
        report(self, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", reaped_once)
    spec = StudySpec(**SPEC | {"n_trials": 3, "eval_tokens": 512, "strategy": "random", "baselines": ["uniform"]})
    url = sqlite_url(tmp_path)
    run_search(spec, storage_url=url, study_name="reaped")
    states = [t.state for t in trials(url, "reaped")]
    assert reaped == [0] and states[0] == TrialState.FAIL
    assert states.count(TrialState.COMPLETE) >= 2  # the worker went on measuring
