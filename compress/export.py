"""Write a compressed checkpoint (``slimscout apply``); ``compress.checkpoint`` reads it back.

(``load_compressed`` and the format's names live in ``compress.checkpoint``, which does not need a
session, so that ``compress.catalog`` can load an export without importing this module; they are
re-exported here.)

An export is a Hugging Face-style directory::

    model.safetensors        the weights, in the model's dtype (float32 for our models)
    config.json, generation_config.json, tokenizer files
    slimscout_config.json    the config document that produced it
    slimscout_manifest.json  per compressible layer: how it is stored, params and bytes; totals

How each layer is stored (``storage`` in the manifest):

``factored``
    a low-rank layer whose two factors hold fewer weights than the dense matrix
    (``compress.accounting.stored_shapes``) becomes a :class:`LowRankLinear`: ``down`` [r, in] then
    ``up`` [out, r] (bias, if any, on ``up``). These are real parameter savings.
``dense``
    everything else, as one [out, in] matrix: dense layers, and low-rank layers whose factors
    would not save parameters (the rank-r product is stored).

Flags on top of that: ``sparsity: "dense-with-zeros"`` (pruned weights are stored as explicit
zeros, no sparse format), ``quant: "dequantized"`` (values lie on the quantization grid but are
stored as floats). ``params``/``bytes`` are the honest counts of ``compress.accounting``;
``file_params``/``file_bytes`` are what the file actually holds.

Every value equals what ``ModelSession.compressed_weight`` computes (dense layers are copied from it,
factors are checked bit for bit against it), so evaluating the export equals evaluating the config.

Weights are written in the dtype the user picks (float32, bfloat16, float16), sharded with an
index once they pass ``max_shard_size`` (``compress.weight_files``), next to the tokenizer, the
generation config and a ``README.md`` model card (``compress.model_card``). ``format`` picks the
layout: ``slimscout`` (this module) or ``compressed-tensors`` (``compress.export_ct``: packed integer
codes that vLLM and transformers load); the manifest names it.

``--merge`` writes plain dense weights (no LowRankLinear), loadable by any transformers runtime
with ``AutoModelForCausalLM.from_pretrained``. A factored export needs :func:`load_compressed`
(``slimscout.load_compressed``); ``compress.catalog.load_model`` uses it for any directory holding
``slimscout_manifest.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from common.errors import ExportError
from compress.accounting import layer_cost, stored_shapes
from compress.checkpoint import (
    CONFIG_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    WEIGHTS_NAME,
    LowRankLinear,
    build_skeleton,
    load_compressed,
    read_manifest,
    set_module,
)
from compress.config import CompressionConfig, LayerConfig
from compress.layers import LinearLayer, count_params
from compress.model_card import CardMeasurement, render
from compress.registry import EXPORT_FORMATS
from compress.weight_files import DEFAULT_SHARD_SIZE, files_bytes, save_weights

if TYPE_CHECKING:
    from compress.export_ct import LayerPlan
    from compress.session import ModelSession

CARD_NAME = "README.md"

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "EXPORT_FORMATS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "WEIGHTS_NAME",
    "ExportResult",
    "LowRankLinear",
    "build_manifest",
    "check_target",
    "compressed_model",
    "export_compressed",
    "is_factored",
    "load_compressed",
    "read_manifest",
]

@dataclass(frozen=True)
class ExportResult:
    out: Path
    params_kept: int  # accounted params of the compressible layers (= ModelSession.cost(config).params)
    params_total: int  # params_kept plus everything not compressible (embeddings, norms, head)
    params_linear_dense: int
    stored_params: int  # parameters the exported model really holds (tied weights once)
    accounted_bytes: int  # compress.accounting bytes of the compressible layers
    file_bytes: int  # size of model.safetensors
    factored_layers: int
    merged: bool
    seconds: float
    format: str = "slimscout"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "params_kept": self.params_kept, "params_total": self.params_total,
                "params_linear_dense": self.params_linear_dense,
                "keep_ratio": self.params_kept / self.params_linear_dense,
                "stored_params": self.stored_params, "accounted_bytes": self.accounted_bytes,
                "file_bytes": self.file_bytes, "factored_layers": self.factored_layers, "merged": self.merged,
                "format": self.format, "dtype": self.dtype, "seconds": self.seconds}


# -- writing ---------------------------------------------------------------------------------
def is_factored(layer: LinearLayer, cfg: LayerConfig | None) -> bool:
    """Whether the accounting stores this layer as two factors (the export then does too)."""
    return cfg is not None and len(stored_shapes(layer, cfg)) == 2


def _build_factored(session: ModelSession, name: str, cfg: LayerConfig) -> LowRankLinear:
    dense = session.modules[name]  # holds compressed_weight(name, cfg) while the config is applied
    left, right = session.compressed_factors(name, cfg)
    if not torch.equal(left @ right, dense.weight):
        raise RuntimeError(f"export of {name} disagrees with the weight the session applied")
    module = LowRankLinear(dense.in_features, dense.out_features, int(left.shape[1]),
                           bias=dense.bias is not None, dtype=dense.weight.dtype, device=dense.weight.device)
    with torch.no_grad():
        module.down.weight.copy_(right)
        module.up.weight.copy_(left)
        if dense.bias is not None:
            module.up.bias.copy_(dense.bias)
    return module


@contextmanager
def compressed_model(session: ModelSession, config: CompressionConfig, *,
                     merge: bool = False) -> Iterator[nn.Module]:
    """The session's model with ``config`` on it, factored layers swapped for LowRankLinear (unless
    ``merge``); the dense model is put back afterwards."""
    originals: dict[str, nn.Module] = {}
    with session.applied(config):
        try:
            if not merge:
                for layer in session.layers:
                    cfg = config.layers.get(layer.name)
                    if cfg is not None and is_factored(layer, cfg):
                        originals[layer.name] = set_module(session.model, layer.name,
                                                            _build_factored(session, layer.name, cfg))
            yield session.model
        finally:
            for name, module in originals.items():
                set_module(session.model, name, module)


def _layer_entry(layer: LinearLayer, cfg: LayerConfig | None, *, storage: str, element_size: int,
                 bits: int | None = None, group_size: int | None = None) -> dict[str, Any]:
    """A manifest row: ``storage`` is ``factored`` (two factors), ``dense`` (one float matrix) or ``packed``
    (compressed-tensors integer codes of ``bits`` bits and one scale per ``group_size`` inputs)."""
    cost = layer_cost(layer, cfg)
    rows, cols = layer.out_features, layer.in_features
    if storage == "factored":
        shapes = stored_shapes(layer, cfg) if cfg is not None else []
        tensors: dict[str, list[int]] = {"up": list(shapes[0]), "down": list(shapes[1])}
        file_params = sum(r * c for r, c in shapes)
        file_bytes = file_params * element_size
    elif storage == "packed":
        assert bits is not None and group_size is not None
        tensors = {"weight_packed": [rows, -(-cols * bits // 32)], "weight_scale": [rows, cols // group_size]}
        file_params = rows * cols
        file_bytes = 4 * rows * -(-cols * bits // 32) + rows * (cols // group_size) * element_size
    else:
        tensors = {"weight": [rows, cols]}
        file_params = rows * cols
        file_bytes = file_params * element_size
    return {
        "shape": [rows, cols],
        "storage": storage,
        "rank": cfg.lowrank.rank if cfg is not None and cfg.lowrank is not None else None,
        "tensors": tensors,
        "sparsity": "dense-with-zeros" if cfg is not None and cfg.sparsity is not None else None,
        "quant": (None if cfg is None or cfg.quant is None else "packed" if storage == "packed" else "dequantized"),
        "params": cost.params, "bytes": cost.bytes,
        "file_params": file_params, "file_bytes": file_bytes,
        "config": cfg.to_dict() if cfg is not None else {},
    }


def _absent_modules(model: nn.Module, kind: str) -> list[str]:
    """Submodules the architecture built from config has but ``model`` leaves out (set to None), such as
    the pooler of a ``BertModel(add_pooling_layer=False)``; the loader leaves them out too."""
    skeleton = build_skeleton(model.config, kind)
    absent: list[str] = []
    for name, _ in skeleton.named_modules():
        if not name or any(name.startswith(f"{prefix}.") for prefix in absent):
            continue
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            continue
        if getattr(parent, child, None) is None:
            absent.append(name)
    return absent


def build_manifest(session: ModelSession, config: CompressionConfig, *, merge: bool, export_format: str,
                   dtype: torch.dtype, model_file_bytes: int, stored_params: int,
                   plans: dict[str, LayerPlan] | None = None) -> dict[str, Any]:
    from common import __version__

    element_size = torch.empty((), dtype=dtype).element_size()
    layers = {}
    for layer in session.layers:
        cfg = config.layers.get(layer.name)
        plan = plans.get(layer.name) if plans is not None else None
        if plan is not None:
            layers[layer.name] = _layer_entry(layer, cfg, storage=plan.storage, element_size=element_size,
                                              bits=plan.bits, group_size=plan.group_size)
        else:
            storage = "factored" if not merge and is_factored(layer, cfg) else "dense"
            layers[layer.name] = _layer_entry(layer, cfg, storage=storage, element_size=element_size)
    cost = session.cost(config)
    return {
        "schema": MANIFEST_SCHEMA, "format_version": FORMAT_VERSION, "format": export_format,
        "model_id": config.model_id, "kind": session.loaded.kind, "merged": merge,
        "dtype": str(dtype).removeprefix("torch."),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "slimscout_version": __version__,
        "absent_modules": _absent_modules(session.model, session.loaded.kind),
        "layers": layers,
        "totals": {
            "params": cost.params, "bytes": cost.bytes,
            "params_linear_dense": session.params_linear, "bytes_linear_dense": 2 * session.params_linear,
            "file_params": sum(entry["file_params"] for entry in layers.values()),
            "file_bytes": sum(entry["file_bytes"] for entry in layers.values()),
            "factored_layers": sum(entry["storage"] == "factored" for entry in layers.values()),
            "model_params": stored_params, "model_file_bytes": model_file_bytes,
        },
    }


def _write_weights(model: nn.Module, directory: Path, *, dtype: torch.dtype | None,
                   max_shard_size: int | str) -> None:
    """config.json, generation_config.json and the weights (tied weights stored once)."""
    save_weights(model, directory, dtype=dtype, max_shard_size=max_shard_size)


def check_target(out: Path, *, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force``; even then, only an export or an empty directory."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ExportError(f"{out} already exists (pass --force to replace it)")
    if not out.is_dir() or out.is_symlink():
        raise ExportError(f"{out} exists and is not a directory; refusing to replace it")
    if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty and not a slimscout export; "
                          "refusing to replace it even with --force")


def _first_missing_ancestor(path: Path) -> Path | None:
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _remove_empty_dirs(start: Path, stop: Path | None) -> None:
    """Remove ``start`` and its parents up to ``stop`` (the directories this export created), if empty."""
    if stop is None:
        return
    path = start
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == stop:
            return
        path = path.parent


def export_compressed(session: ModelSession, config: CompressionConfig, out: str | Path, *,
                      force: bool = False, merge: bool = False, export_format: str = "slimscout",
                      dtype: torch.dtype | None = None, max_shard_size: int | str = DEFAULT_SHARD_SIZE,
                      measurement: CardMeasurement | None = None, command: str | None = None) -> ExportResult:
    """Write ``config`` applied to ``session``'s model to ``out`` (see the module docstring).

    Validates first (model id, layer names, ranks via ``session.check_model``; what ``export_format``
    cannot express). Writes into a temporary directory next to ``out`` and renames it at the end: on
    any error (a full disk included) nothing is left behind and an earlier export stays as it was.
    ``dtype`` (default: the model's) casts a copy of the weights; the session's model is untouched.
    """
    from compress.export_ct import plan_layers, write_compressed_tensors

    start = time.perf_counter()
    if export_format not in EXPORT_FORMATS:
        raise ExportError(f"unknown format {export_format!r} (one of {', '.join(EXPORT_FORMATS)})")
    out = Path(out).expanduser().absolute()
    session.check_model(config)
    cost = session.cost(config)
    plans = plan_layers(session.layers, config, merge=merge) if export_format == "compressed-tensors" else None
    check_target(out, force=force)
    session.warm(config)
    model_dtype = next(iter(session.modules.values())).weight.dtype
    dtype = dtype or model_dtype
    with staged_directory(out, force=force) as staging:
        with compressed_model(session, config, merge=merge or plans is not None) as model:
            if plans is not None:
                write_compressed_tensors(session, config, model, staging, plans, dtype=dtype,
                                         max_shard_size=max_shard_size)
            else:
                _write_weights(model, staging, dtype=dtype, max_shard_size=max_shard_size)
            stored_params = count_params(model)
        session.loaded.tokenizer.save_pretrained(staging)
        config.save(staging / CONFIG_NAME)
        manifest = build_manifest(session, config, merge=merge, export_format=export_format, dtype=dtype,
                                  model_file_bytes=files_bytes(staging), stored_params=stored_params,
                                  plans=plans)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        card = render(base_model=session.loaded.model_id, config=config, layers=session.layers,
                      export_format=export_format, dtype=manifest["dtype"], measurement=measurement,
                      command=command)
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
    return ExportResult(out=out, params_kept=cost.params,
                        params_total=session.params_total - session.params_linear + cost.params,
                        params_linear_dense=session.params_linear, stored_params=stored_params,
                        accounted_bytes=cost.bytes, file_bytes=manifest["totals"]["model_file_bytes"],
                        factored_layers=manifest["totals"]["factored_layers"], merged=merge,
                        seconds=time.perf_counter() - start, format=export_format, dtype=manifest["dtype"])


@contextmanager
def staged_directory(out: Path, *, force: bool) -> Iterator[Path]:
    """A temporary directory next to ``out`` to write an export into; renamed to ``out`` when the block ends.

    On any error (a full disk included) the staging directory and the parents this created are
    removed, and an earlier export at ``out`` stays as it was.
    """
    created = _first_missing_ancestor(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        _usual_permissions(staging)
        _replace(staging, out, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty_dirs(out.parent, created)
        raise


def _usual_permissions(directory: Path) -> None:
    """mkdtemp makes a private directory (and safetensors a private file): give them the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for file in directory.iterdir():
        file.chmod(0o666 & ~umask)


def _replace(staging: Path, out: Path, *, force: bool) -> None:
    check_target(out, force=force)  # again: something may have appeared while we were writing
    if not out.exists():
        staging.rename(out)
        return
    trash = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    out.rename(trash)
    try:
        staging.rename(out)
    except BaseException:
        trash.rename(out)
        raise
    shutil.rmtree(trash, ignore_errors=True)
