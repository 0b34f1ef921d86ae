"""Config document v1: a per-layer compression configuration as versioned JSON.

    {"schema": "slimscout.config/v1", "model_id": "smollm2-135m",
     "layers": {"model.layers.0.mlp.down_proj": {
         "lowrank":  {"rank": 128, "method": "svd-whitened"},
         "sparsity": {"ratio": 0.5, "score": "wanda", "pattern": "unstructured"},
         "quant":    {"bits": 8, "group_size": 128, "outliers": null}}},
     "meta": {...}}

Within one layer the operators apply in a fixed order: low rank first, then sparsity (of the
dense weight, or of both factors when a rank is set), then quantization (of whatever is stored;
``outliers`` "N:M" keeps an N:M-structured set of the largest weights in 16 bits, SDQ style).
A layer absent from ``layers`` stays dense; an empty ``layers`` means the dense model.
Every entry is validated on construction; errors name the field (``layers.<name>.sparsity.ratio``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError

SCHEMA_V1 = "slimscout.config/v1"
LowRankMethod = Literal["svd", "svd-whitened"]
SparsityScore = Literal["magnitude", "wanda"]
LOWRANK_METHODS: tuple[str, ...] = ("svd", "svd-whitened")
SPARSITY_SCORES: tuple[str, ...] = ("magnitude", "wanda")
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
QUANT_BITS = (4, 8)


def parse_nm(pattern: str, where: str) -> tuple[int, int]:
    match = NM_PATTERN.match(pattern)
    if not match:
        raise ConfigError(where, f"expected 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m or m > 64:
        raise ConfigError(where, f"N:M needs 0 < N < M <= 64, got {pattern!r}")
    return n, m


@dataclass(frozen=True)
class LowRankSpec:
    rank: int
    method: LowRankMethod = "svd-whitened"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError("rank", f"must be a positive integer, got {self.rank!r}")
        if self.method not in LOWRANK_METHODS:
            raise ConfigError("method", f"must be one of {', '.join(LOWRANK_METHODS)}, got {self.method!r}")


@dataclass(frozen=True)
class SparsitySpec:
    """``ratio`` is the fraction of weights set to zero; an N:M pattern fixes it at 1 - N/M."""

    ratio: float
    score: SparsityScore = "wanda"
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0.0 <= self.ratio < 1.0:
            raise ConfigError("ratio", f"must be a number in [0, 1), got {self.ratio!r}")
        if self.score not in SPARSITY_SCORES:
            raise ConfigError("score", f"must be one of {', '.join(SPARSITY_SCORES)}, got {self.score!r}")
        if self.pattern != "unstructured":
            n, m = parse_nm(self.pattern, "pattern")
            if abs(self.ratio - (1 - n / m)) > 1e-9:
                raise ConfigError(
                    "ratio", f"pattern {self.pattern} zeroes {1 - n / m:g} of weights, ratio says {self.ratio!r}"
                )

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else parse_nm(self.pattern, "pattern")


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    group_size: int = 128
    outliers: str | None = None  # "N:M": keep N of every M weights (largest |w|) in 16 bits

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS or isinstance(self.bits, bool):
            raise ConfigError("bits", f"must be one of {QUANT_BITS}, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError("group_size", f"must be a positive integer, got {self.group_size!r}")
        if self.outliers is not None:
            parse_nm(self.outliers, "outliers")

    @property
    def outlier_nm(self) -> tuple[int, int] | None:
        return None if self.outliers is None else parse_nm(self.outliers, "outliers")


@dataclass(frozen=True)
class LayerConfig:
    lowrank: LowRankSpec | None = None
    sparsity: SparsitySpec | None = None
    quant: QuantSpec | None = None

    @property
    def is_dense(self) -> bool:
        return self.lowrank is None and self.sparsity is None and self.quant is None

    def to_dict(self) -> dict[str, Any]:
        return {
            key: asdict(value)
            for key, value in (("lowrank", self.lowrank), ("sparsity", self.sparsity), ("quant", self.quant))
            if value is not None
        }


@dataclass(frozen=True)
class CompressionConfig:
    model_id: str
    layers: dict[str, LayerConfig] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_V1,
            "model_id": self.model_id,
            "layers": {name: layer.to_dict() for name, layer in sorted(self.layers.items())},
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


_SPEC_TYPES: dict[str, type[Any]] = {"lowrank": LowRankSpec, "sparsity": SparsitySpec, "quant": QuantSpec}


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be an object, got {type(raw).__name__}")
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
    try:
        return cls(**raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}" if exc.field else where, exc.reason) from None
    except TypeError as exc:
        raise ConfigError(where, str(exc)) from None


def layer_from_dict(raw: Any, where: str) -> LayerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SPEC_TYPES))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown operator (allowed: {', '.join(_SPEC_TYPES)})")
    specs = {key: _build(_SPEC_TYPES[key], value, f"{where}.{key}") for key, value in raw.items() if value is not None}
    return LayerConfig(**specs)


def config_from_dict(raw: Any) -> CompressionConfig:
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config document must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"schema", "model_id", "layers", "meta"})
    if unknown:
        raise ConfigError(unknown[0], "unknown field (allowed: schema, model_id, layers, meta)")
    if raw.get("schema") != SCHEMA_V1:
        raise ConfigError("schema", f"must be {SCHEMA_V1!r}, got {raw.get('schema')!r}")
    model_id = raw.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise ConfigError("model_id", "must be a non-empty string")
    layers = raw.get("layers", {})
    if not isinstance(layers, dict):
        raise ConfigError("layers", f"must be an object mapping module names to entries, got {type(layers).__name__}")
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise ConfigError("meta", "must be an object")
    parsed = {name: layer_from_dict(entry, f"layers.{name}") for name, entry in layers.items()}
    return CompressionConfig(model_id, {name: layer for name, layer in parsed.items() if not layer.is_dense}, meta)


def load_config(path: str | Path) -> CompressionConfig:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"config file {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError("", f"config file {path} nests too deeply to be a config document") from None
    return config_from_dict(raw)
