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

Each slot names its method (``lowrank.method``, ``sparsity.score``, ``quant.method``), one of the
methods ``compress.registry`` lists for that slot. ``quant.method`` is written only when it is not
the default ``rtn``, so every v1 document reads and writes back byte for byte as before.

The entries are frozen pydantic dataclasses in strict mode (no coercion: ``"0.4"`` or ``true`` is
not a number) that forbid unknown fields; they keep positional construction
(``SparsitySpec(0.5, "wanda")``). Every entry is validated on construction; errors are
``ConfigError`` naming the field (``layers.<name>.sparsity.ratio``). Torch-free.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from common.errors import ConfigError
from compress.registry import DEFAULT_QUANT_METHOD, method_info

SCHEMA_V1 = "slimscout.config/v1"
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
_STRICT = ConfigDict(strict=True, extra="forbid")
# Kept for callers that type a setting by name; the registry decides which names are valid.
LowRankMethod = str
SparsityScore = str


def parse_nm(pattern: str, where: str) -> tuple[int, int]:
    match = NM_PATTERN.match(pattern)
    if not match:
        raise ConfigError(where, f"expected 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m or m > 64:
        raise ConfigError(where, f"N:M needs 0 < N < M <= 64, got {pattern!r}")
    return n, m


def _field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in fields(cls)]


def _from_validation(exc: ValidationError, cls: type[Any], where: str) -> ConfigError:
    """The first pydantic error as a ConfigError naming ``<where>.<field>`` (positional args by name)."""
    error = exc.errors(include_url=False)[0]
    names = _field_names(cls)
    parts = [names[part] if isinstance(part, int) and part < len(names) else str(part) for part in error["loc"]]
    loc = ".".join(parts)
    field = f"{where}.{loc}" if where and loc else (where or loc)
    if error["type"] == "unexpected_keyword_argument":
        return ConfigError(field, f"unknown field (allowed: {', '.join(sorted(names))})")
    if error["type"] == "missing_argument":
        return ConfigError(field, "required")
    return ConfigError(field, f"{error['msg']}, got {error.get('input')!r}")


_T = TypeVar("_T")


def _config_errors(cls: type[_T]) -> type[_T]:
    """Make construction raise ConfigError naming the field, as every caller expects, not ValidationError."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise _from_validation(exc, cls, "") from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_config_errors
@dataclass(frozen=True, config=_STRICT)
class LowRankSpec:
    rank: int = Field(ge=1)
    method: LowRankMethod = "svd-whitened"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        method_info("lowrank", value)
        return value


@_config_errors
@dataclass(frozen=True, config=_STRICT)
class SparsitySpec:
    """``ratio`` is the fraction of weights set to zero; an N:M pattern fixes it at 1 - N/M.

    ``score`` names the sparsity method (a score such as ``wanda``, or any registered method).
    """

    ratio: float = Field(ge=0.0, lt=1.0, allow_inf_nan=False)
    score: SparsityScore = "wanda"
    pattern: str = "unstructured"

    @field_validator("score")
    @classmethod
    def _known_score(cls, value: str) -> str:
        method_info("sparsity", value)
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if value != "unstructured":
            parse_nm(value, "pattern")
        return value

    @model_validator(mode="after")
    def _ratio_matches_pattern(self) -> SparsitySpec:
        if self.pattern != "unstructured":
            n, m = parse_nm(self.pattern, "pattern")
            if abs(self.ratio - (1 - n / m)) > 1e-9:
                raise ConfigError(
                    "ratio", f"pattern {self.pattern} zeroes {1 - n / m:g} of weights, ratio says {self.ratio!r}"
                )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else parse_nm(self.pattern, "pattern")


@_config_errors
@dataclass(frozen=True, config=_STRICT)
class QuantSpec:
    bits: int = 8
    group_size: int = Field(default=128, ge=1)
    outliers: str | None = None  # "N:M": keep N of every M weights (largest |w|) in 16 bits
    method: str = DEFAULT_QUANT_METHOD

    @field_validator("outliers")
    @classmethod
    def _outliers(cls, value: str | None) -> str | None:
        if value is not None:
            parse_nm(value, "outliers")
        return value

    @model_validator(mode="after")
    def _bits_of_method(self) -> QuantSpec:
        try:
            supported = method_info("quant", self.method).bits
        except ConfigError as exc:
            raise ConfigError("method", exc.reason) from None
        if self.bits not in supported:
            raise ConfigError("bits", f"must be one of {supported} for method {self.method!r}, got {self.bits!r}")
        return self

    @property
    def outlier_nm(self) -> tuple[int, int] | None:
        return None if self.outliers is None else parse_nm(self.outliers, "outliers")

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        if raw["method"] == DEFAULT_QUANT_METHOD:  # v1 documents never wrote it
            del raw["method"]
        return raw


@_config_errors
@dataclass(frozen=True, config=_STRICT)
class LayerConfig:
    lowrank: LowRankSpec | None = None
    sparsity: SparsitySpec | None = None
    quant: QuantSpec | None = None

    @property
    def is_dense(self) -> bool:
        return self.lowrank is None and self.sparsity is None and self.quant is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.lowrank is not None:
            out["lowrank"] = asdict(self.lowrank)
        if self.sparsity is not None:
            out["sparsity"] = asdict(self.sparsity)
        if self.quant is not None:
            out["quant"] = self.quant.to_dict()
        return out


@_config_errors
@dataclass(frozen=True, config=_STRICT)
class CompressionConfig:
    model_id: str = Field(min_length=1)
    layers: dict[str, LayerConfig] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

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
    try:
        return cls(**raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}" if exc.field else where, exc.reason) from None


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


__all__ = [
    "SCHEMA_V1",
    "CompressionConfig",
    "LayerConfig",
    "LowRankMethod",
    "LowRankSpec",
    "QuantSpec",
    "SparsityScore",
    "SparsitySpec",
    "config_from_dict",
    "layer_from_dict",
    "load_config",
    "parse_nm",
]
