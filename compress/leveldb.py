"""The level database: every linear layer compressed at every level, computed once, then only loaded.

Reconstruction operators (SparseGPT, GPTQ) are too slow to run per trial, and their result depends
on the level. As in EvoPress, the database holds, for each layer and each level of a grid, the
compressed weight computed from the DENSE model's calibration Grams, so any mix of levels plugs
together; applying a config is then loading stored tensors.

On disk (under the session's cache directory by default, so every study and worker on the machine
shares it): ``manifest.json`` (model and calibration fingerprints, operator, grid, and per finished
layer its levels, file size and sha256) and one safetensors file per layer, tensors ``<level>.<part>``.
A build goes layer by layer, writes each file atomically and records it in the manifest at once, so a
killed build resumes where it stopped. Peak memory is one layer's working set: its Gram, read afresh
and turned into the inverse Hessian factor in its own memory (``LevelOperator.prepare``, once per
layer, shared by all its levels), the dense weight in float32, and one level at a time (each level
goes to a spool file as soon as it is computed, ``compress.spooled_safetensors``). Float tensors are
stored in bfloat16 or float16 when that is bit-exact, else float32 (SparseGPT's updated weights never
are; GPTQ stores uint8 codes).

Levels (``KeepGrid``): level ℓ keeps ``base + ℓ·step`` weights of every layer, ``step`` the same
count of weights for all layers, so moving one layer up and another down keeps the budget exactly
(EvoPress's ``weights_diff``). A step must be a whole number of weights per row of every layer,
since zeros are counted per row. ``BitsGrid`` levels are bit widths.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from common.errors import ConfigError, SlimscoutError
from compress import heap
from compress.layers import LinearLayer
from compress.operators import gptq as gptq_operator
from compress.operators import sparsegpt as sparsegpt_operator
from compress.ops import QuantizedWeight, default_group_size, gptq, pruned_per_row, sparsegpt
from compress.ops.gptq import act_order_perm
from compress.ops.obs import GramSpentError, InverseHessian, inverse_hessian_factor
from compress.spooled_safetensors import SpooledSafetensors

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
Progress = Callable[[int, int, str], None]  # (layers done, layers in all, the layer just finished)


class LevelDatabaseError(SlimscoutError):
    """A level database that does not belong to this model / calibration set / operator / grid."""


class CorruptLevelDatabaseError(LevelDatabaseError):
    """A layer file that is missing, truncated or disagrees with the manifest; building again rebuilds it."""


# -- grids -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeepGrid:
    """Keep fractions around ``keep``: ``levels`` steps above and below, ``step`` weights per step.

    ``step=None`` takes EvoPress's rule, 0.5 · min(s, 1 - s) / levels · hidden², rounded up to a
    whole number of weights per row of every layer. A layer gets the levels that fit it (kept
    weights within [0, in_features] per row), as in EvoPress.
    """

    keep: float
    levels: int = 8
    step: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.keep <= 1.0:
            raise ConfigError("grid.keep", f"must be in [0, 1], got {self.keep}")
        if self.levels < 0:
            raise ConfigError("grid.levels", f"must be >= 0, got {self.levels}")
        if self.step is not None and self.step < 1:
            raise ConfigError("grid.step", f"must be >= 1 weight, got {self.step}")

    def resolved_step(self, layers: list[LinearLayer]) -> int:
        rows = math.lcm(*(layer.out_features for layer in layers))
        if self.step is not None:
            for layer in layers:
                if self.step % layer.out_features:
                    raise ConfigError("grid.step", f"{self.step} weights is not a whole number of weights per row "
                                                   f"of {layer.name} ({layer.out_features} rows)")
            return self.step
        raw = self.target_weights(layers)
        return max(rows, math.ceil(raw / rows) * rows)

    def target_weights(self, layers: list[LinearLayer]) -> float:
        """EvoPress's step before rounding: 0.5 · min(s, 1 - s) / levels · hidden² weights."""
        hidden = max(layer.in_features for layer in layers if layer.type in ("q", "o")) if any(
            layer.type in ("q", "o") for layer in layers) else max(layer.in_features for layer in layers)
        sparsity = 1.0 - self.keep
        return 0.5 * min(sparsity, self.keep) / max(self.levels, 1) * hidden**2

    def layer_levels(self, layers: list[LinearLayer]) -> dict[str, dict[int, dict[str, Any]]]:
        step = self.resolved_step(layers)
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for layer in layers:
            base = pruned_per_row(layer.in_features, 1.0 - self.keep)
            per_row = step // layer.out_features
            levels = {}
            for level in range(-self.levels, self.levels + 1):
                pruned = base - level * per_row
                if 0 <= pruned <= layer.in_features:
                    levels[level] = {"sparsity": pruned / layer.in_features, "pruned_per_row": pruned}
            out[layer.name] = levels
        return out

    def spec(self) -> dict[str, Any]:
        return {"kind": "keep", **asdict(self)}


@dataclass(frozen=True)
class BitsGrid:
    """GPTQ bit widths; ``group_size=None`` picks ``default_group_size`` per layer."""

    bits: tuple[int, ...] = (2, 3, 4, 8)
    group_size: int | None = None
    act_order: bool = False

    def layer_levels(self, layers: list[LinearLayer]) -> dict[str, dict[int, dict[str, Any]]]:
        out = {}
        for layer in layers:
            group = self.group_size or default_group_size(layer.in_features)
            if layer.in_features % group:
                raise ConfigError("grid.group_size", f"{group} does not divide {layer.name}'s "
                                                     f"in_features={layer.in_features}")
            out[layer.name] = {
                bits: {"bits": bits, "group_size": group, "act_order": self.act_order} for bits in self.bits
            }
        return out

    def spec(self) -> dict[str, Any]:
        return {"kind": "bits", **asdict(self), "bits": list(self.bits)}


class LevelGrid(Protocol):
    def layer_levels(self, layers: list[LinearLayer]) -> dict[str, dict[int, dict[str, Any]]]: ...

    def spec(self) -> dict[str, Any]: ...


# -- operators ---------------------------------------------------------------------------------
class LevelOperator(Protocol):
    """Compresses one layer at one level into stored tensors, and turns them back into a weight."""

    percdamp: float  # Hessian dampening: part of the database's identity

    def prepare(self, gram: Tensor, levels: Mapping[int, Mapping[str, Any]], *,
                overwrite: bool = True) -> InverseHessian:
        """What all ``levels`` of a layer share, from its Gram (which, with ``overwrite``, this may use
        up: the caller's own copy; ``GramSpentError`` when it was, in vain)."""
        ...

    def encode(self, weight: Tensor, prepared: InverseHessian, params: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def decode(self, tensors: Mapping[str, Tensor], params: Mapping[str, Any]) -> Tensor: ...


class SparseGPTLevels:
    percdamp = sparsegpt_operator.DAMPENING  # the operator's, so a level equals the operator at that setting

    def prepare(self, gram: Tensor, levels: Mapping[int, Mapping[str, Any]], *,
                overwrite: bool = True) -> InverseHessian:
        return inverse_hessian_factor(gram, percdamp=self.percdamp, overwrite=overwrite)

    def encode(self, weight: Tensor, prepared: InverseHessian, params: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"weight": sparsegpt(weight, prepared, sparsity=params["sparsity"])}

    def decode(self, tensors: Mapping[str, Tensor], params: Mapping[str, Any]) -> Tensor:
        return tensors["weight"]


class GPTQLevels:
    percdamp = gptq_operator.DAMPENING

    def prepare(self, gram: Tensor, levels: Mapping[int, Mapping[str, Any]], *,
                overwrite: bool = True) -> InverseHessian:
        orders = {bool(params["act_order"]) for params in levels.values()}
        if len(orders) != 1:
            raise ValueError("all levels of a layer must share act_order (they share one inverse Hessian)")
        perm = act_order_perm(gram).cpu() if orders.pop() else None
        return inverse_hessian_factor(gram, percdamp=self.percdamp, perm=perm, overwrite=overwrite)

    def encode(self, weight: Tensor, prepared: InverseHessian, params: Mapping[str, Any]) -> dict[str, Tensor]:
        q = gptq(weight, prepared, bits=params["bits"], group_size=params["group_size"],
                 act_order=params["act_order"]).quantized
        return {"codes": q.codes, "scales": q.scales, "zeros": q.zeros}

    def decode(self, tensors: Mapping[str, Tensor], params: Mapping[str, Any]) -> Tensor:
        return QuantizedWeight(tensors["codes"], tensors["scales"].float(), tensors["zeros"],
                               params["bits"], params["group_size"], symmetric=True).dequantize()  # gptq's default


LEVEL_OPERATORS: dict[str, LevelOperator] = {"sparsegpt": SparseGPTLevels(), "gptq": GPTQLevels()}


# -- storage helpers ---------------------------------------------------------------------------
def narrowest_exact(tensor: Tensor) -> Tensor:
    """``tensor`` in bfloat16 or float16 if that round-trips bit for bit, else unchanged."""
    if not tensor.is_floating_point():
        return tensor
    for dtype in (torch.bfloat16, torch.float16):
        narrow = tensor.to(dtype)
        if torch.equal(narrow.to(tensor.dtype), tensor):
            return narrow
    return tensor


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def _identity(session: Any) -> dict[str, str]:
    fingerprint = session.loaded.fingerprint
    return {"model": fingerprint, "calibration": session.cache_dir.name.removeprefix(f"{fingerprint}-")}


@dataclass
class LevelDatabase:
    directory: Path
    manifest: dict[str, Any]
    built_layers: list[str] = field(default_factory=list)  # layers computed (not found on disk) by the last build
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- building ------------------------------------------------------------------------------
    @staticmethod
    def default_directory(session: Any, operator: str, grid: LevelGrid) -> Path:
        identity = {**grid.spec(), "percdamp": LEVEL_OPERATORS[operator].percdamp} if operator in LEVEL_OPERATORS \
            else grid.spec()
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        return Path(session.cache_dir) / "leveldb" / f"{operator}-{digest}"

    @classmethod
    def build(
        cls,
        session: Any,
        operator: str,
        grid: LevelGrid,
        *,
        directory: Path | None = None,
        progress: Progress | None = None,
    ) -> LevelDatabase:
        """Build (or finish building) the database; layers already on disk and intact are kept."""
        if operator not in LEVEL_OPERATORS:
            raise ConfigError("operator", f"no level database for {operator!r}; one of {sorted(LEVEL_OPERATORS)}")
        op = LEVEL_OPERATORS[operator]
        levels = grid.layer_levels(session.layers)
        directory = directory or cls.default_directory(session, operator, grid)
        expected = {"version": FORMAT_VERSION, **_identity(session), "operator": operator, "grid": grid.spec(),
                    "percdamp": op.percdamp}
        path = directory / MANIFEST
        if path.is_file():
            manifest = cls._read_manifest(path)
            cls._check_identity(manifest, expected, directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            manifest = {**expected, "layers": {}}
            _write_json(path, manifest)
        db = cls(directory, manifest)
        stats = session.stats()
        total = len(session.layers)
        for done, layer in enumerate(session.layers, start=1):
            name = layer.name
            if not db._intact(name):
                manifest["layers"].pop(name, None)
                try:  # once per layer, in the Gram's own memory
                    prepared = op.prepare(stats.owned_gram(name), levels[name])
                except GramSpentError:  # not at the first damping: again, from a copy that can be retried
                    prepared = op.prepare(stats.owned_gram(name), levels[name], overwrite=False)
                dense = session.stored_dense_weight(name)  # the operators make their own float32 copy
                file = db._file(name)
                tmp = file.with_name(f".{file.name}.{time.monotonic_ns()}.tmp")
                with SpooledSafetensors(tmp, metadata={"layer": name}) as out:
                    for level, params in levels[name].items():
                        for part, tensor in op.encode(dense, prepared, params).items():
                            out.add(f"{level}.{part}", narrowest_exact(tensor.detach().cpu()))
                tmp.replace(file)
                del prepared, dense
                heap.trim()
                manifest["layers"][name] = {
                    "levels": {str(level): params for level, params in levels[name].items()},
                    "bytes": file.stat().st_size,
                    "sha256": _sha256(file),
                }
                _write_json(path, manifest)
                db._handles.pop(name, None)
                db.built_layers.append(name)
            if progress is not None:
                progress(done, total, name)
        return db

    @classmethod
    def open(cls, directory: Path, session: Any | None = None) -> LevelDatabase:
        """Open a finished database; with ``session``, refuse one from another model or calibration set."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise LevelDatabaseError(f"no level database at {directory} (no {MANIFEST})")
        manifest = cls._read_manifest(path)
        if session is not None:
            cls._check_identity(manifest, {**_identity(session)}, Path(directory))
            missing = [layer.name for layer in session.layers if layer.name not in manifest["layers"]]
            if missing:
                raise LevelDatabaseError(f"level database {directory} is unfinished: {len(missing)} layers missing "
                                         f"(first {missing[0]}); build it again to finish it")
        return cls(Path(directory), manifest)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptLevelDatabaseError(f"unreadable level database manifest {path}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
            raise LevelDatabaseError(f"{path} is not a version-{FORMAT_VERSION} level database manifest")
        return manifest

    @staticmethod
    def _check_identity(manifest: Mapping[str, Any], expected: Mapping[str, Any], directory: Path) -> None:
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise LevelDatabaseError(
                    f"level database {directory} was built for {key}={manifest.get(key)!r}, not {value!r}; "
                    "refusing to mix it with this model / calibration set")

    def _file(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def _intact(self, name: str) -> bool:
        entry = self.manifest["layers"].get(name)
        file = self._file(name)
        if entry is None or not file.is_file():
            return False
        return file.stat().st_size == entry["bytes"] and _sha256(file) == entry["sha256"]

    def verify(self) -> list[str]:
        """Layers whose file is missing or whose checksum disagrees with the manifest."""
        return [name for name in self.manifest["layers"] if not self._intact(name)]

    # -- reading -------------------------------------------------------------------------------
    @property
    def operator(self) -> str:
        return str(self.manifest["operator"])

    def levels(self, name: str) -> list[int]:
        return sorted(int(level) for level in self._entry(name)["levels"])

    def _entry(self, name: str) -> dict[str, Any]:
        entry = self.manifest["layers"].get(name)
        if entry is None:
            raise LevelDatabaseError(f"layer {name!r} is not in the level database at {self.directory}")
        return entry

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = safe_open(str(self._file(name)), framework="pt")  # memory-mapped
            except (SafetensorError, OSError) as exc:
                raise CorruptLevelDatabaseError(
                    f"level database file {self._file(name)} is corrupt or missing ({exc}); "
                    "LevelDatabase.build(...) rebuilds it") from None
            self._handles[name] = handle
        return handle

    def weight(self, name: str, level: int) -> Tensor:
        """Layer ``name``'s float32 weight at ``level``, as the operator computed it (a copy of its own)."""
        return self._stored_weight(name, level).clone()

    def _stored_weight(self, name: str, level: int) -> Tensor:
        """Like ``weight``, but possibly a view of the memory-mapped file (valid while the file is)."""
        entry = self._entry(name)
        params = entry["levels"].get(str(level))
        if params is None:
            raise ConfigError(f"layers.{name}.level", f"level {level} is not in the database grid for this layer; "
                                                      f"it has levels {self.levels(name)}")
        handle = self._handle(name)
        prefix = f"{level}."
        try:
            keys = [key for key in handle.keys() if key.startswith(prefix)]  # noqa: SIM118 (a safe_open handle)
            tensors = {key[len(prefix):]: handle.get_tensor(key) for key in keys}
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CorruptLevelDatabaseError(f"level database file {self._file(name)} is corrupt ({exc}); "
                                            "LevelDatabase.build(...) rebuilds it") from None
        if not tensors:
            raise CorruptLevelDatabaseError(f"level database file {self._file(name)} lacks level {level}; "
                                            "LevelDatabase.build(...) rebuilds it")
        return LEVEL_OPERATORS[self.operator].decode(tensors, params).float()

    def apply(self, target: Any, levels: Mapping[str, int]) -> float:
        """Write ``levels`` into a ModelSession (other layers restored dense) or an nn.Module; returns seconds.

        A session must be of the model and calibration set the database was built from. In a session,
        only the layers whose level changed since the last apply are read and written (a search's next
        trial differs from the last in a few layers).
        """
        start = time.perf_counter()
        for name in levels:
            self._entry(name)
        if isinstance(target, nn.Module):
            modules = dict(target.named_modules())
            with torch.no_grad():
                for name, level in levels.items():
                    modules[name].weight.copy_(self._stored_weight(name, level))
            return time.perf_counter() - start
        self._check_identity(self.manifest, _identity(target), self.directory)
        target.restore(keep=set(levels))
        source = str(self.directory.resolve())
        for name, level in levels.items():  # a layer already at its level is not read again
            target.write(name, ("leveldb", source, level), lambda n=name, lv=level: self._stored_weight(n, lv))
        return time.perf_counter() - start

    def disk_bytes(self) -> int:
        return sum(int(entry["bytes"]) for entry in self.manifest["layers"].values())
