"""Predictor-guided search on a tiny model: warm start from an earlier study in the same storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from optuna.trial import TrialState, create_trial

from compress.budget import BUDGET_TOLERANCE, Allocation, logit, logit_family, project_to_budget
from search.context import Workbench
from search.runner import run_search
from search.space import to_config
from search.spec import StudySpec
from search.strategies.guided import Guide
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


def test_candidates_perturb_the_best_measured_config_itself_not_its_knob_projection() -> None:
    bench = Workbench()
    spec = StudySpec(**SPEC | {"budget": 0.5, "n_trials": 10})  # type: ignore[arg-type]
    space = bench.space(spec)
    # Types and blocks in a checkerboard: type knobs plus a depth profile (additive) cannot draw it,
    # so its knob projection is far off.
    blocks = sorted({layer.block for layer in space.layers})
    raw = np.array([0.85 if (blocks.index(layer.block) + space.types.index(layer.type)) % 2 else 0.2
                    for layer in space.layers])
    profile = project_to_budget(space.layers, logit_family(raw), 0.5, space.layer_operators({}))
    best_config = to_config(space, profile, {"method": "baseline"})
    fitted = space.fit_params(profile.keep, profile.operators)
    best = create_trial(params=fitted, distributions=space.distributions(), value=1.0,
                        user_attrs={"config": best_config.to_dict()})
    worse = create_trial(params={k: 0.0 for k in fitted}, distributions=space.distributions(), value=2.0,
                         user_attrs={"config": space.config({k: 0.0 for k in fitted}).to_dict()})

    def distance(allocation: Allocation) -> float:
        keep = np.array([allocation.keep[layer.name] for layer in space.layers])
        target = np.array([profile.keep[layer.name] for layer in space.layers])
        return float(np.abs(logit(np.clip(keep, 1e-4, 1 - 1e-4)) - logit(np.clip(target, 1e-4, 1 - 1e-4))).mean())

    candidates = Guide(n_candidates=40).candidates(space, [worse, best], np.random.default_rng(0))
    around_best = [c for i, c in enumerate(candidates[:20]) if i % 2 == 0]  # parents alternate: best, worse
    assert all(c.exact_config for c in candidates[:20])
    projection = distance(space.allocation(fitted))
    assert max(distance(c.allocation) for c in around_best) < projection
    for candidate in candidates:
        assert abs(candidate.allocation.keep_ratio - 0.5) <= BUDGET_TOLERANCE * 0.5
