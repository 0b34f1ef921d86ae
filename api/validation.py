"""Checks of a new study that depend on the server's settings (limits, model and data roots).

Each failure is reported like pydantic's own, with ``loc`` naming the field, so a client sees
one 422 format whatever went wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import SlimscoutError
from common.settings import Settings
from compress.catalog_entries import CATALOG
from compress.corpora import BUILTIN_DATASETS
from compress.model_dir import check_model_dir
from search.spec import HUB_DATASET, StudySpec

DATA_SUFFIXES = (".txt", ".jsonl")


def error(field: str, message: str, value: Any) -> dict[str, Any]:
    return {"loc": ("body", field), "msg": message, "type": "value_error", "input": value}


def inside(roots: list[Path], name: str) -> Path | None:
    """``name`` (absolute, or relative to a root) resolved, if it lies strictly inside one of ``roots``.

    Symlinks are resolved before the containment check, so neither ``..`` nor a link can escape.
    Names no file system would take (a NUL byte, a component too long, ``~nobody``) lie nowhere.
    """
    if "\0" in name:
        return None
    for root in roots:
        base = root.expanduser().resolve()
        try:
            candidate = Path(name).expanduser()
            path = (candidate if candidate.is_absolute() else base / candidate).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unknown user, a bad name
            continue
        if path != base and path.is_relative_to(base):
            return path
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long
        return False


def resolve_model_id(model_id: str, settings: Settings) -> tuple[str | None, str | None]:
    """(the id to store, why it is refused): a catalog name as is, or the checked directory inside a model root."""
    if model_id in CATALOG:
        return model_id, None
    path = inside(settings.model_roots, model_id)
    if path is None or not _is_file(path / "config.json"):
        roots = ", ".join(str(root) for root in settings.model_roots) or "none configured"
        return None, (f"not a catalog model ({', '.join(CATALOG)}) nor a model directory "
                      f"(with config.json) inside a model root ({roots})")
    try:
        check_model_dir(path, trust_remote_code=settings.trust_remote_code)
    except (SlimscoutError, OSError) as exc:
        return None, str(exc)
    return str(path), None


def resolve_dataset(dataset: str, settings: Settings) -> str | None:
    if dataset in BUILTIN_DATASETS or HUB_DATASET.match(dataset):
        return dataset
    path = inside(settings.data_roots, dataset)
    if path is None or path.suffix not in DATA_SUFFIXES or not _is_file(path):
        return None
    return str(path)


def check_study(body: StudySpec, settings: Settings) -> tuple[StudySpec, list[dict[str, Any]]]:
    """``body`` with model and dataset resolved, and the errors found (empty when it is acceptable)."""
    errors: list[dict[str, Any]] = []
    model_id, refusal = resolve_model_id(body.model_id, settings)
    if refusal is not None:
        errors.append(error("model_id", refusal, body.model_id))
    roots = ", ".join(str(root) for root in settings.data_roots) or "none configured"
    expected = (f"expected {', '.join(BUILTIN_DATASETS)}, hf:NAME[:CONFIG], or a .txt/.jsonl file inside a "
                f"data root ({roots})")
    dataset = resolve_dataset(body.dataset, settings)
    if dataset is None:
        errors.append(error("dataset", expected, body.dataset))
    extra = [resolve_dataset(name, settings) for name in body.recover_train_extra]
    for name, found in zip(body.recover_train_extra, extra, strict=True):
        if found is None:
            errors.append(error("recover_train_extra", f"{name!r}: {expected}", name))
    if body.n_trials > settings.max_trials:
        errors.append(error("n_trials", f"at most {settings.max_trials} trials per study", body.n_trials))
    for field in ("eval_tokens", "holdout_tokens", "sensitivity_tokens"):
        # The holdout and sensitivity passes run once per study: a server's limit never refuses their defaults.
        limit = settings.max_eval_tokens
        if field != "eval_tokens":
            limit = max(limit, StudySpec.model_fields[field].default)
        tokens = getattr(body, field)
        if tokens > limit:
            errors.append(error(field, f"at most {limit} evaluation tokens", tokens))
    if body.trust_remote_code and not settings.trust_remote_code:
        errors.append(error("trust_remote_code", "this server does not run model code from model directories "
                                                 "(the operator has not set SLIMSCOUT_TRUST_REMOTE_CODE)", True))
    resolved = body.model_copy(update={"model_id": model_id or body.model_id, "dataset": dataset or body.dataset,
                                       "recover_train_extra": [r or n for r, n in zip(extra, body.recover_train_extra,
                                                                                       strict=True)]})
    return resolved, errors
