"""Is a local directory a model slimscout may load? Torch-free, so the API can ask before it queues a study.

Weights load from safetensors only: a pickle checkpoint (``pytorch_model.bin`` and friends) runs
arbitrary code when unpickled, so a directory holding nothing else is refused, never opened. A
``config.json`` with an ``auto_map`` names Python files that transformers would import; that needs
``SLIMSCOUT_TRUST_REMOTE_CODE``.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import ModelNotFoundError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_model_dir(path: Path, *, trust_remote_code: bool) -> None:
    """Raise ModelNotFoundError or UnsafeCheckpointError (one line naming the problem) unless ``path`` is loadable."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeCheckpointError(
                f"{path} holds only pickle checkpoints ({', '.join(pickles)}); "
                "slimscout loads safetensors only (convert with safetensors first)")
        raise ModelNotFoundError(f"{path} holds no .safetensors weights")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelNotFoundError(f"{path}/config.json is not valid JSON ({exc})") from None
    if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
        raise UnsafeCheckpointError(
            f"{path} needs its own Python code (auto_map in config.json), and remote code is off "
            "(the operator enables it with SLIMSCOUT_TRUST_REMOTE_CODE)")
