"""Operator handlers, resolved from ``compress.registry`` by name on first use.

The registry (torch-free) names each method's handler as ``"module:attr"``; this package imports
it when a config first needs it. Modules: ``base`` (the interface, shared costs), one module per
method (``wanda``, ``magnitude``, ``rtn``) and one for the two SVD variants (``svd``), which differ
by a single argument.

An unknown method is a ``ConfigError`` naming the field, never a fallback.

Adding an operator (e.g. SparseGPT) touches two files:
1. ``compress/operators/sparsegpt.py``: a ``SparsityHandler`` subclass (``QuantHandler`` for a
   quantiser such as GPTQ) with ``sparsify`` and, if its result is precomputed per level, ``warm``
   filling ``ctx.handler_cache(self.name)`` from ``ctx.stats()`` / ``ctx.dense_weight(name)``;
   override ``cost`` / ``value_bytes`` only if its stored format differs.
2. ``compress/registry.py``: its ``MethodInfo`` (slot, name, "module:attr", bits for a quantiser)
   and one ``OperatorInfo`` per study operator (``sparsegpt``; ``sparsegpt-2:4`` as family ``nm``
   with preset pattern ``2:4``).
The config document, ``compress.budget``'s tables, the accounting, the session and the error
proxy (exact output error for a method without a score) then take it as they are
(``tests/compress/test_operators.py`` does exactly this with a toy level-database operator).
"""

from __future__ import annotations

import functools
import importlib

from common.errors import ConfigError
from compress.config import LayerConfig
from compress.operators.base import LowRankHandler, QuantHandler, ScoreSparsity, SparsityHandler
from compress.registry import Slot, method_info


@functools.cache
def _resolve(target: str) -> object:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _handler(slot: Slot, name: str) -> object:
    return _resolve(method_info(slot, name).handler)


def _wrong(slot: Slot, name: str, found: object) -> TypeError:
    return TypeError(f"{method_info(slot, name).handler} is a {type(found).__name__}, not a {slot} handler")


def lowrank_handler(method: str) -> LowRankHandler:
    found = _handler("lowrank", method)
    if not isinstance(found, LowRankHandler):
        raise _wrong("lowrank", method, found)
    return found


def sparsity_handler(method: str) -> SparsityHandler:
    found = _handler("sparsity", method)
    if not isinstance(found, SparsityHandler):
        raise _wrong("sparsity", method, found)
    return found


def quant_handler(method: str) -> QuantHandler:
    found = _handler("quant", method)
    if not isinstance(found, QuantHandler):
        raise _wrong("quant", method, found)
    return found


def levelled(cfg: LayerConfig) -> bool:
    """Whether warming ``cfg`` computes a per-(layer, setting) result (``SparsityHandler.levelled``)."""
    return bool((cfg.sparsity is not None and sparsity_handler(cfg.sparsity.score).levelled)
                or (cfg.quant is not None and quant_handler(cfg.quant.method).levelled))


def score_handler(method: str) -> ScoreSparsity:
    """The handler of a score-based sparsity method (one that ranks weights); ConfigError otherwise."""
    found = sparsity_handler(method)
    if not isinstance(found, ScoreSparsity):
        raise ConfigError("sparsity.score", f"{method!r} is not a score-based sparsity method")
    return found


__all__ = [
    "LowRankHandler",
    "QuantHandler",
    "ScoreSparsity",
    "SparsityHandler",
    "lowrank_handler",
    "quant_handler",
    "score_handler",
    "sparsity_handler",
]
