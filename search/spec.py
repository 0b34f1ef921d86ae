"""What a study searches: stored as the Optuna study's user attribute ``slimscout``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from common.errors import BudgetError, ConfigError
from compress.budget import check_operators
from search.space import DEFAULT_GRANULARITY, GRANULARITIES

OBJECTIVES = ("ppl", "kl", "cosine")  # cosine: 1 - cosine to the dense embeddings (encoders)
STRATEGIES = ("guided", "tpe", "random")


@dataclass(frozen=True)
class StudySpec:
    model_id: str
    budget: float
    operators: list[str] = field(default_factory=lambda: ["wanda"])
    granularity: str = DEFAULT_GRANULARITY
    n_trials: int = 100
    eval_tokens: int = 2048
    objective: str = "kl"
    dataset: str = "lee-news"
    split: str = "search"
    seed: int = 0
    strategy: str = "guided"
    baselines: list[str] = field(default_factory=lambda: ["uniform", "owl", "sensitivity"])
    sensitivity_tokens: int = 512
    holdout_tokens: int = 4096
    prune: bool = True
    warm_start: bool = False  # guided only: learn from earlier comparable studies in the same storage

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise BudgetError(f"budget must be in (0, 1], got {self.budget}")
        check_operators(self.operators)
        if self.granularity not in GRANULARITIES:
            raise ConfigError("granularity", f"must be one of {', '.join(GRANULARITIES)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"must be one of {', '.join(OBJECTIVES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.n_trials < 1:
            raise ConfigError("n_trials", "must be at least 1")
        if self.eval_tokens < 2:
            raise ConfigError("eval_tokens", "must be at least 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StudySpec:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})
