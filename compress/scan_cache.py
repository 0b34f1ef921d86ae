"""Where measured scans (forward passes spent once per model, data and operator) live on disk.

A scan is one JSON file in the session's cache directory, named by a prefix and a hash of what
determines its result (operator, levels, tokens, dataset); the model and calibration data are in
the directory's name already. Writes are atomic, so a killed scan leaves no half file behind.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from compress.session import ModelSession


def scan_path(session: ModelSession, prefix: str, key: dict[str, Any]) -> Path:
    """``<cache_dir>/<prefix>-<hash of key>.json`` (``key`` must be JSON-serializable)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=False).encode()).hexdigest()[:12]
    return session.cache_dir / f"{prefix}-{digest}.json"


def read_scan(path: Path) -> dict[str, Any] | None:
    """The stored scan, or None when there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def write_scan(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
