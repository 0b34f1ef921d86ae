"""The study view's pure functions: ETA, best, baselines, layer profiles, odd numbers from workers."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from api import study_view
from search.spec import StudySpec
from search.trial_digest import IncrementalDigest
from storage import Study, StudyStatus


def study(status: StudyStatus = StudyStatus.RUNNING, n_trials: int = 10,
          summary: dict | None = None) -> Study:
    spec = StudySpec(model_id="tiny-llama", budget=0.5, n_trials=n_trials, eval_tokens=64).to_dict()
    return Study(id="abc", optuna_study_name="slimscout-abc", spec=spec, status=status, summary=summary)


def trial(number: int, state: TrialState = TrialState.COMPLETE, value: float | None = None,
          seconds: float = 10.0, **attrs: Any) -> FrozenTrial:
    made = create_trial(state=state, value=value if state == TrialState.COMPLETE else None, user_attrs=attrs)
    made.number = number
    if state.is_finished():
        end = datetime(2026, 1, 1, 12, 0, 0)
        made.datetime_start, made.datetime_complete = end - timedelta(seconds=seconds), end
    return made


def test_eta_is_mean_duration_times_remaining_over_active_workers() -> None:
    trials = [trial(0, value=0.3, seconds=10), trial(1, value=0.2, seconds=30),
              trial(2, TrialState.PRUNED, seconds=1),
              trial(3, TrialState.RUNNING, worker="a:1"), trial(4, TrialState.RUNNING, worker="b:2"),
              trial(5, TrialState.RUNNING, worker="b:2")]
    seen = study_view.digest(trials)
    assert study_view.counts(seen).model_dump() == {"n_complete": 2, "n_running": 3, "n_waiting": 0,
                                                    "n_failed": 0, "n_pruned": 1}
    progress = study_view.progress(study(), seen)
    assert progress.done == 3 and progress.mean_trial_s == 20.0 and progress.active_workers == 2
    assert progress.eta_s == pytest.approx(20.0 * 7 / 2)


def test_eta_without_workers_falls_back_to_the_summary() -> None:
    trials = [trial(0, value=0.3)]
    seen = study_view.digest(trials)
    progress = study_view.progress(study(summary={"eta_s": 99.0}), seen)
    assert progress.active_workers == 0 and progress.eta_s == 99.0
    assert study_view.progress(study(StudyStatus.COMPLETED), seen).eta_s == 0.0
    assert study_view.progress(study(StudyStatus.FAILED), seen).eta_s is None


def test_best_is_the_lowest_measured_value_until_the_summary_names_the_winner() -> None:
    trials = [trial(0, value=0.3, ppl=30.0), trial(1, value=float("inf")), trial(2, value=0.1, ppl=21.0),
              trial(3, TrialState.PRUNED)]
    best = study_view.best_point(study(), trials, study_view.digest(trials))
    assert best is not None and best.trial == 2 and best.ppl == 21.0
    final = study(StudyStatus.COMPLETED, summary={"best": {"trial": 0}})
    assert study_view.best_trial(final, trials) is trials[0]


def test_baselines_from_trials_and_summary() -> None:
    trials = [trial(0, value=0.4, source="baseline:uniform", ppl=40.0, keep_ratio=0.5),
              trial(1, value=0.3, source="baseline:owl", ppl=35.0)]
    summary = {"baselines": {"owl": {"ppl": 34.0, "trial": 1}}}
    found = study_view.baselines(study(summary=summary), study_view.digest(trials))
    assert found["uniform"].ppl == 40.0 and found["uniform"].keep_ratio == 0.5
    assert found["owl"].ppl == 34.0 and found["owl"].source == "baseline:owl"


def test_trial_public_survives_odd_attributes() -> None:
    odd = trial(7, value=0.2, ppl=float("inf"), kl="0.2", keep_ratio=True, params_kept=12.0, worker=3)
    public = study_view.trial_public(odd)
    assert public.ppl is None and public.kl is None and public.keep_ratio is None
    assert public.params_kept == 12 and public.worker is None and public.value == 0.2
    assert math.isclose(public.duration_s or 0.0, 10.0)


def test_layer_profile_derived_from_the_entries() -> None:
    config = {"schema": "slimscout.config/v1", "model_id": "x", "meta": {
        "layer_shapes": {"model.layers.1.mlp.down_proj": [64, 128]}}, "layers": {
        "model.layers.0.mlp.down_proj": {"sparsity": {"ratio": 0.25}},
        "model.layers.1.mlp.down_proj": {"lowrank": {"rank": 16}, "sparsity": {"ratio": 0.5}},
        "model.layers.1.self_attn.q_proj": {"lowrank": {"rank": 8}},  # no shape: unknown
        "model.layers.0.self_attn.q_proj": {"quant": {"bits": 8}},
        "lm_head": {"sparsity": {"ratio": 0.1}}}}
    profile = study_view.layer_profile(3, config)
    assert profile.source == "derived" and profile.blocks == [0, 1]
    assert profile.traces["mlp.down_proj"] == [0.75, pytest.approx(16 * (64 + 128) / (64 * 128) * 0.5)]
    assert profile.traces["self_attn.q_proj"] == [1.0, None]
    assert profile.other == {"lm_head": pytest.approx(0.9)}


def test_layer_profile_of_an_encoder() -> None:
    config = {"meta": {"layer_keep": {"encoder.layer.0.attention.self.query": 0.5,
                                      "encoder.layer.1.attention.self.query": 0.25,
                                      "encoder.layer.1.output.dense": 0.75}}}
    profile = study_view.layer_profile(None, config)
    assert profile.source == "meta.layer_keep" and profile.blocks == [0, 1]
    assert profile.traces == {"attention.self.query": [0.5, 0.25], "output.dense": [None, 0.75]}
    assert study_view.layer_profile(None, None).source == "none"


def test_incremental_digest_matches_a_full_pass() -> None:
    """Finished trials are folded in once; running ones are recounted on every poll until they finish."""
    incremental = IncrementalDigest()
    first = [trial(0, value=0.4, source="baseline:uniform", worker="a:1"),
             trial(1, TrialState.RUNNING, worker="a:1"), trial(2, TrialState.RUNNING, worker="b:2"),
             trial(3, TrialState.WAITING)]
    later = [first[0], trial(1, value=0.2, seconds=30, worker="a:1"), trial(2, TrialState.PRUNED),
             trial(3, TrialState.RUNNING, worker="b:2"), trial(4, value=0.2),
             trial(5, value=0.5, source="baseline:uniform")]
    for trials in (first, first, later, later):
        got, want = incremental.update(trials), study_view.digest(trials)
        assert got.counts == want.counts and got.workers == want.workers and got.n_running == want.n_running
        assert got.best is want.best and got.baselines == want.baselines
        assert (got.completed_s, got.n_timed) == (want.completed_s, want.n_timed)
    assert got.best is later[1]  # the tie at 0.2 goes to the earlier trial
    assert got.baselines["uniform"] is later[5]  # the rerun


def test_setup_progress_reads_a_sound_record_and_nothing_else() -> None:
    record = {"step": "sensitivity scan", "done": 3, "total": 12, "seconds": 4.5, "finished": False}
    shown = study_view.setup_progress(study(summary={"setup": record}))
    assert shown is not None and shown.model_dump() == {**record, "fraction": 0.25}
    for odd in (None, "scan", {**record, "done": 13}, {**record, "total": None}, {**record, "seconds": math.inf},
                {**record, "done": -1}):
        assert study_view.setup_progress(study(summary={"setup": odd})) is None, odd
    assert study_view.setup_progress(study(summary=None)) is None
    empty = study_view.setup_progress(study(summary={"setup": {**record, "done": 0, "total": 0, "step": 7}}))
    assert empty is not None and empty.fraction == 0.0 and empty.step is None
