"""What a worker keeps loaded between trials: models, their caches, evaluators, search spaces."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.settings import get_settings
from compress.measure import Evaluator
from compress.session import ModelSession
from search.space import SearchSpace
from search.spec import StudySpec


@dataclass
class Workbench:
    """Loaded models and evaluators, reused across trials and studies in one process."""

    sessions: dict[str, ModelSession] = field(default_factory=dict)
    evaluators: dict[tuple[str, str, str, int], Evaluator] = field(default_factory=dict)

    def session(self, model_id: str) -> ModelSession:
        if model_id not in self.sessions:
            settings = get_settings()  # SLIMSCOUT_DEVICE / SLIMSCOUT_DTYPE: where this worker runs models
            self.sessions[model_id] = ModelSession.open(model_id, device=settings.device, dtype=settings.dtype)
        return self.sessions[model_id]

    def evaluator(self, model_id: str, dataset: str, split: str, tokens: int) -> Evaluator:
        key = (model_id, dataset, split, tokens)
        if key not in self.evaluators:
            self.evaluators[key] = self.session(model_id).evaluator(
                dataset=dataset,
                split=split,  # type: ignore[arg-type]
                tokens=tokens,
            )
        return self.evaluators[key]

    def space(self, spec: StudySpec) -> SearchSpace:
        session = self.session(spec.model_id)
        return SearchSpace(session.layers, spec.budget_ratio, spec.operators, spec.granularity, session.loaded.model_id)
