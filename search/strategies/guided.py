"""Predictor-guided search: the XGBoost accuracy predictor screens candidates before workers measure.

Each round (when the queue is empty): fit the predictor on every measured (config, quality) pair;
draw many candidates — perturbations of the best measured knobs and random points inside the knob
ranges where the best configurations live (the search space shrinks as evidence accrues); score
them all with the predictor; enqueue only the top few, with an exploration share picked by
uncertainty. Until ``n_init`` trials are measured, the plain sampler (TPE) proposes.

Warm start (``spec.warm_start``): the measured trials of earlier studies in the same storage on the
same model, data, split, tokens and objective train a prior predictor; this study's predictor then
learns only the correction to it, and screening starts as soon as the seed trials are measured.
Features depend only on the config, so a study at another budget or granularity is a valid prior.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from compress.baselines import cached_scan
from compress.budget import Allocation, logit, logit_family, project_to_budget, sigmoid
from compress.config import LayerConfig, config_from_dict
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy
from predictor.report import cross_validated_quality
from predictor.screen import screen, shrink_ranges
from predictor.xgb import XGBPredictor
from search.context import Workbench
from search.optuna_adapter import completed_trials, other_studies
from search.space import SearchSpace, enqueue_exact
from search.spec import StudySpec
from search.strategies.tpe import tpe_sampler
from search.strategy_registry import NothingToPrepare
from search.study import Counts, measured

log = logging.getLogger(__name__)
PREDICTOR_ATTR = "predictor"
#: What must match for an earlier study's measurements to mean the same thing as this one's.
COMPARABLE = ("model_id", "dataset", "split", "eval_tokens", "objective")
MIN_PRIOR_PAIRS = 10
WARM_INIT = 2  # with a prior, two measured trials of this study are enough to start screening


def target(value: float) -> float:
    """The predictor learns log(objective): perplexity and KL are both positive and heavy-tailed."""
    return math.log(max(value, 1e-9))


@dataclass(frozen=True)
class Candidate:
    """A config the predictor scores: its knobs (what the sampler sees) and its exact allocation.

    ``exact_config``: the allocation is not ``space.allocation(params)`` (the knobs only approximate
    it), so a pick is measured from its config document.
    """

    params: dict[str, Any]
    allocation: Allocation
    exact_config: bool = False


def measured_logits(space: SearchSpace, trial: optuna.trial.FrozenTrial) -> np.ndarray | None:
    """Per-layer keep logits of the config ``trial`` measured (None if it does not say)."""
    keep = trial.user_attrs.get("config", {}).get("meta", {}).get("layer_keep")
    if not keep or any(layer.name not in keep for layer in space.layers):
        return None
    values = np.clip(np.array([float(keep[layer.name]) for layer in space.layers]), 1e-4, 1 - 1e-4)
    return np.asarray(logit(values))


@dataclass
class Guide:
    n_init: int = 10
    n_candidates: int = 400
    per_round: int = 2
    explore_share: float = 0.25
    cv_every: int = 10  # the CV report costs 5 fits; it informs the dashboard, not the search
    use_scan: bool = True
    _features: dict[tuple[Any, ...], FeatureBuilder] = field(default_factory=dict)
    _proxies: dict[str, LayerProxy] = field(default_factory=dict)
    _priors: dict[str, tuple[XGBPredictor | None, dict[str, Any]]] = field(default_factory=dict)

    def features(self, spec: StudySpec, bench: Workbench) -> FeatureBuilder:
        """The feature builder for the study's model, with its sensitivity scan when one was stored."""
        key = (spec.model_id, spec.budget_ratio, tuple(spec.operators), spec.sensitivity_tokens, spec.dataset)
        if key not in self._features:
            session = bench.session(spec.model_id)
            if spec.model_id not in self._proxies:
                self._proxies[spec.model_id] = LayerProxy(session)
            scan = (cached_scan(session, spec.budget_ratio, spec.operators, tokens=spec.sensitivity_tokens,
                                dataset=spec.dataset) if self.use_scan else None)
            self._features[key] = FeatureBuilder(session.layers, self._proxies[spec.model_id], block_damage=scan)
        return self._features[key]

    def training_set(
        self, study: optuna.Study, spec: StudySpec, bench: Workbench
    ) -> tuple[np.ndarray, np.ndarray, list[optuna.trial.FrozenTrial]]:
        trials = [t for t in measured(study) if "config" in t.user_attrs and t.value is not None]
        builder = self.features(spec, bench)
        X = builder.matrix([config_from_dict(t.user_attrs["config"]).layers for t in trials])
        y = np.array([target(float(t.value)) for t in trials])  # type: ignore[arg-type]
        return X, y, trials

    def prior(
        self, study: optuna.Study, spec: StudySpec, bench: Workbench
    ) -> tuple[XGBPredictor | None, dict[str, Any]]:
        """A predictor fitted on earlier comparable studies (once per study and process), and what it used."""
        if not spec.warm_start:
            return None, {}
        if study.study_name not in self._priors:
            names, trials = [], []
            for other in other_studies(study):
                if any(other.spec.get(key) != getattr(spec, key) for key in COMPARABLE):
                    continue
                done = [t for t in completed_trials(study, other) if "config" in t.user_attrs and t.value is not None]
                if done:
                    names.append(other.name)
                    trials += done
            model = None
            if len(trials) >= MIN_PRIOR_PAIRS:
                X = self.features(spec, bench).matrix([config_from_dict(t.user_attrs["config"]).layers for t in trials])
                y = np.array([target(float(t.value)) for t in trials])  # type: ignore[arg-type]
                model = XGBPredictor(seed=spec.seed).fit(X, y)
            info = {"studies": names, "pairs": len(trials), "used": model is not None}
            self._priors[study.study_name] = (model, info)
        return self._priors[study.study_name]

    def __call__(self, study: optuna.Study, spec: StudySpec, bench: Workbench, now: Counts) -> int:
        """One screening round; returns how many candidates it enqueued (0: let the sampler propose)."""
        open_slots = spec.n_trials - (now.finished + now.running + now.waiting)
        X, y, trials = self.training_set(study, spec, bench)
        prior, warm = self.prior(study, spec, bench)
        n_init = WARM_INIT if prior is not None else min(self.n_init, max(4, spec.n_trials // 8))
        if len(trials) < n_init or open_slots <= 0:
            return 0
        space = bench.space(spec)
        rng = np.random.default_rng(spec.seed * 7919 + len(trials))
        model = XGBPredictor(seed=spec.seed, prior=prior).fit(X, y)
        candidates = self.candidates(space, trials, rng)
        layer_sets: list[dict[str, LayerConfig]] = [
            c.allocation.layer_configs(space.layers, space.quant) for c in candidates
        ]
        Xc = self.features(spec, bench).matrix(layer_sets)
        mean, std = model.predict_with_uncertainty(Xc)
        picks = screen(Xc, model, k=min(self.per_round, open_slots), explore_share=self.explore_share, rng=rng)
        for index in picks:
            pick = candidates[index]
            attrs: dict[str, Any] = {
                "source": "predictor",
                "predicted": math.exp(float(mean[index])),
                "predicted_std": float(std[index]),
            }
            if pick.exact_config:  # not a point of the knob space: measure the config itself
                enqueue_exact(study, space, pick.allocation, attrs)
            else:
                study.enqueue_trial(pick.params, user_attrs=attrs)
        self.record(study, X, y, trials, n_scored=len(candidates), n_enqueued=len(picks), prior=prior, warm=warm)
        return len(picks)

    def candidates(
        self, space: SearchSpace, trials: list[optuna.trial.FrozenTrial], rng: np.random.Generator
    ) -> list[Candidate]:
        """Half perturbations of the best measured configs, half random points where good ones live.

        A perturbation moves the measured config itself (its per-layer keep, in logit space) by a
        knob-shaped offset: type knobs plus a depth profile. Moving its knob-space projection
        instead would lose what the knobs cannot express, such as the sensitivity baseline's
        per-block profile, and every candidate would start worse than the config it came from.
        """
        ranked = sorted(trials, key=lambda t: float(t.value))  # type: ignore[arg-type]
        knobs = space.knob_names()
        ranges: dict[str, tuple[float, float]] = {}
        if knobs:
            values = np.array([[float(t.params.get(k, 0.0)) for k in knobs] for t in ranked])
            scores = np.array([float(t.value) for t in ranked])  # type: ignore[arg-type]
            bounds = [(space.low, space.high)] * len(knobs)
            ranges = dict(
                zip(knobs, shrink_ranges(values, scores, quantile=0.3, margin=0.15, bounds=bounds), strict=True)
            )
        elite = ranked[:5]
        elite_logits = [measured_logits(space, t) for t in elite]
        zero = {name: 0.0 for name in knobs}
        base = np.asarray(logit(space.budget))  # raw_logits(step) - base: the knobs' offset alone
        out: list[Candidate] = []
        n_perturb = self.n_candidates // 2
        for i in range(n_perturb):
            scale = 0.5 if i % 3 == 0 else 0.2
            parent, logits = elite[i % len(elite)], elite_logits[i % len(elite)]
            if logits is None or not knobs:
                params = space.perturb(parent.params, rng, scale=scale)
                out.append(Candidate(params, space.allocation(params)))
                continue
            step = space.perturb(zero | {k: v for k, v in parent.params.items() if k not in zero}, rng, scale=scale)
            moved = sigmoid(logits + space.raw_logits(step) - base)
            allocation = project_to_budget(space.layers, logit_family(moved), space.budget, space.layer_operators(step))
            out.append(Candidate(space.fit_params(allocation.keep, allocation.operators), allocation, True))
        for _ in range(self.n_candidates - n_perturb):
            params = space.sample(rng, ranges)
            out.append(Candidate(params, space.allocation(params)))
        return out

    def record(
        self,
        study: optuna.Study,
        X: np.ndarray,
        y: np.ndarray,
        trials: list[optuna.trial.FrozenTrial],
        *,
        n_scored: int,
        n_enqueued: int,
        prior: XGBPredictor | None = None,
        warm: dict[str, Any] | None = None,
    ) -> None:
        previous = study.user_attrs.get(PREDICTOR_ATTR, {})
        report: dict[str, Any] = dict(previous)
        if warm:
            report["warm_start"] = warm
        if len(trials) - int(previous.get("cv_at", -999)) >= self.cv_every:
            quality = cross_validated_quality(X, y, lambda: XGBPredictor(seed=0, prior=prior), folds=5)
            report |= {
                "spearman": quality["spearman"],
                "mae": quality["mae"],
                "cv_at": len(trials),
                "cv_pairs": [[math.exp(p), math.exp(m)] for p, m in quality["pairs"]],
            }
        screened_pairs = [
            [t.user_attrs["predicted"], t.value]
            for t in trials
            if "predicted" in t.user_attrs
        ]
        report |= {
            "n_train": len(trials),
            "n_screened": int(previous.get("n_screened", 0)) + n_scored - n_enqueued,
            "n_enqueued": int(previous.get("n_enqueued", 0)) + n_enqueued,
            "pairs": screened_pairs,
        }
        study.set_user_attr(PREDICTOR_ATTR, report)


@dataclass(frozen=True)
class GuidedStrategy(NothingToPrepare):
    """TPE proposes until the predictor has data; then the guide screens and enqueues between asks."""

    def sampler(self, spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
        return tpe_sampler(spec, worker_index)

    def proposer(self) -> Guide:
        return Guide()


STRATEGY = GuidedStrategy()
