"""Where a model's tensors live and in which dtype: the names users pass, and the checks on them.

Every tensor a path creates follows the model (``model_device``); inputs and caches read from disk
are moved to it. Maths that needs float32 (Grams, SVD, reconstruction) upcasts; the model itself
may be bfloat16.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from common.errors import ConfigError
from common.settings import ModelDtype

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in get_args(ModelDtype)}


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, refused with a clear message when not available here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"unknown device {name!r} (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{name!r} asked for, but torch sees no CUDA device here "
                                        f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("device", f"{name!r} asked for, but only {torch.cuda.device_count()} CUDA "
                                        "device(s) are visible")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device", f"{name!r} asked for, but the MPS backend is not available here")
    elif device.type != "cpu":
        raise ConfigError("device", f"unsupported device {name!r} (cpu, cuda, cuda:N or mps)")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError("dtype", f"unsupported model dtype {name!r}; one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (a model lives on one device here)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock reading covers the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
