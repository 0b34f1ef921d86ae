"""slimscout: find the per-layer compression configuration with the best measured quality under a budget."""

from __future__ import annotations

from typing import Any

from common import __version__

__all__ = ["__version__", "load_compressed"]


def load_compressed(path: str, **kwargs: Any) -> Any:
    """Load a checkpoint written by ``slimscout apply`` as a transformers model (imports torch lazily)."""
    from compress.export import load_compressed as _load

    return _load(path, **kwargs)
