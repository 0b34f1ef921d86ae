"""The operator vocabulary: every operator's name, family and handler, in one place. Torch-free.

The API validates study requests against these names without importing torch; the compress
package attaches each operator's handler (what it needs from calibration, how it produces a
layer's weight, its exact cost, its error proxy) to the same names. A name not listed here is an
error everywhere, never a fallback.

Two levels, because a config document names *methods* and a study names *operators*:

- A **method** is what a layer entry of the config document asks for in one of its three slots:
  ``lowrank.method``, ``sparsity.score`` (the sparsity method; named ``score`` in schema v1) or
  ``quant.method`` (absent from a document = ``rtn``). Each method has one handler, named here as
  a ``"module:attr"`` string and imported on first use (``compress.operators.handler``), so this
  module never imports torch.
- An **operator** is what a study chooses per layer: a method plus the settings it fixes
  (``nm-2:4`` is the ``wanda`` method with pattern ``2:4``; ``int8`` is ``rtn`` at 8 bits, group
  128). Its family says how a keep ratio becomes a setting (``compress.budget.layer_config``).

Families:
- ``sparsity``: unstructured sparsity (a keep ratio per layer).
- ``nm``: N:M structured sparsity (keep N/M, or dense).
- ``lowrank``: truncated factorisation (a rank per layer).
- ``quant``: a quantiser stacked on top of one of the above (changes bytes, not parameters), or,
  alone, the per-layer operator of a budget in bits (``check_budget_kind``).

Adding an operator: write its handler module under ``compress/operators/`` and add one
``MethodInfo`` (if it is a new method) and its ``OperatorInfo`` rows below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from common.errors import ConfigError

Family = Literal["sparsity", "nm", "lowrank", "quant"]
Slot = Literal["lowrank", "sparsity", "quant"]
PARAM_FAMILIES: tuple[Family, ...] = ("sparsity", "nm", "lowrank")
SLOT_OF_FAMILY: Mapping[Family, Slot] = MappingProxyType(
    {"sparsity": "sparsity", "nm": "sparsity", "lowrank": "lowrank", "quant": "quant"}
)
# The field of a layer entry's slot that names its method (schema v1 calls the sparsity one ``score``).
METHOD_FIELD: Mapping[Slot, str] = MappingProxyType({"lowrank": "method", "sparsity": "score", "quant": "method"})
DEFAULT_QUANT_METHOD = "rtn"


@dataclass(frozen=True)
class MethodInfo:
    """A method a config document's layer entry can name in ``slot``; ``handler`` is "module:attr"."""

    slot: Slot
    name: str
    handler: str
    summary: str
    bits: tuple[int, ...] = ()  # quant methods: the bit widths they support
    stacks: bool = True  # False: only a layer's whole dense weight (no sparsity or low rank in the same entry)


@dataclass(frozen=True)
class OperatorInfo:
    """A study operator: ``method`` with the settings ``preset`` fixes (pattern, bits, group_size, outliers)."""

    name: str
    family: Family
    summary: str
    method: str
    preset: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def reduces_params(self) -> bool:
        return self.family in PARAM_FAMILIES

    @property
    def slot(self) -> Slot:
        return SLOT_OF_FAMILY[self.family]


def _preset(**values: object) -> Mapping[str, object]:
    return MappingProxyType(values)


METHODS: dict[tuple[Slot, str], MethodInfo] = {
    (info.slot, info.name): info
    for info in (
        MethodInfo("sparsity", "wanda", "compress.operators.wanda:HANDLER", "prune by |W|·‖X‖ per output row"),
        MethodInfo("sparsity", "magnitude", "compress.operators.magnitude:HANDLER", "prune by |W| per output row"),
        MethodInfo("sparsity", "sparsegpt", "compress.operators.sparsegpt:HANDLER",
                   "prune and rebuild the output with the OBS update on the calibration Hessian"),
        MethodInfo("lowrank", "svd", "compress.operators.svd:PLAIN", "truncated SVD of W"),
        MethodInfo("lowrank", "svd-whitened", "compress.operators.svd:WHITENED",
                   "SVD of W·S, S the Cholesky factor of the calibration Gram"),
        MethodInfo("quant", "rtn", "compress.operators.rtn:HANDLER",
                   "round-to-nearest, symmetric per-group scales; N:M outliers kept in 16 bit (SDQ)",
                   bits=(2, 3, 4, 8)),
        MethodInfo("quant", "gptq", "compress.operators.gptq:HANDLER",
                   "GPTQ: columns quantised in turn, the error compensated through the calibration Hessian",
                   bits=(2, 3, 4, 8), stacks=False),
    )
}

OPERATORS: dict[str, OperatorInfo] = {
    info.name: info
    for info in (
        OperatorInfo("wanda", "sparsity", "unstructured, |W|·‖X‖ per output row", "wanda"),
        OperatorInfo("magnitude", "sparsity", "unstructured, |W| per output row", "magnitude"),
        OperatorInfo("sparsegpt", "sparsity", "unstructured, SparseGPT (kept weights rebuilt by OBS)", "sparsegpt"),
        OperatorInfo("nm-2:4", "nm", "2:4 structured sparsity (Wanda score)", "wanda", _preset(pattern="2:4")),
        OperatorInfo("nm-4:8", "nm", "4:8 structured sparsity (Wanda score)", "wanda", _preset(pattern="4:8")),
        OperatorInfo("sparsegpt-2:4", "nm", "2:4 structured sparsity, SparseGPT", "sparsegpt",
                     _preset(pattern="2:4")),
        OperatorInfo("sparsegpt-4:8", "nm", "4:8 structured sparsity, SparseGPT", "sparsegpt",
                     _preset(pattern="4:8")),
        OperatorInfo("svd", "lowrank", "truncated SVD of W", "svd"),
        OperatorInfo("svd-whitened", "lowrank", "SVD of W·S, S the Cholesky factor of the calibration Gram",
                     "svd-whitened"),
        OperatorInfo("int8", "quant", "round-to-nearest int8, per-group scales", "rtn",
                     _preset(bits=8, group_size=128)),
        OperatorInfo("int4", "quant", "round-to-nearest int4, per-group scales", "rtn",
                     _preset(bits=4, group_size=128)),
        OperatorInfo("sdq", "quant", "1:8 outliers in 16 bit + int4 inliers", "rtn",
                     _preset(bits=4, group_size=128, outliers="1:8")),
        # No group_size: per layer, 128 where it divides the inputs, else 64 (compress.budget.layer_quant).
        OperatorInfo("gptq", "quant", "GPTQ int4 (bits per layer under a bits budget), groups dividing the inputs",
                     "gptq", _preset(bits=4)),
    )
}
OPERATOR_NAMES: tuple[str, ...] = tuple(OPERATORS)


def operator_info(name: str) -> OperatorInfo:
    """The registry entry of ``name``; a ConfigError naming the known operators otherwise."""
    try:
        return OPERATORS[name]
    except KeyError:
        raise ConfigError("operators", f"unknown operator {name!r} (one of {', '.join(OPERATOR_NAMES)})") from None


def operators_of(*families: Family) -> tuple[str, ...]:
    """The operator names of the given families, in registry order."""
    return tuple(name for name, info in OPERATORS.items() if info.family in families)


def method_names(slot: Slot) -> tuple[str, ...]:
    """The methods a layer entry may name in ``slot``, in registry order."""
    return tuple(name for (s, name) in METHODS if s == slot)


def method_info(slot: Slot, name: str) -> MethodInfo:
    """The registry entry of method ``name`` in ``slot``; a ConfigError naming the field otherwise."""
    try:
        return METHODS[(slot, name)]
    except KeyError:
        known = ", ".join(method_names(slot))
        raise ConfigError(METHOD_FIELD[slot], f"must be one of {known}, got {name!r}") from None


#: Bits a dense weight is stored in; a budget in bits is the fraction ``budget_bits / DENSE_BITS`` of it.
DENSE_BITS = 16


def check_budget_kind(operators: list[str], *, bits: bool) -> None:
    """A budget in bits takes quantizers only; a keep budget needs a parameter-reducing operator.

    (``compress.budget`` reads a quantizers-only operator list as a budget in bits.)
    """
    families = [operator_info(op).family for op in operators]
    if bits and any(family != "quant" for family in families):
        raise ConfigError("operators", "a budget in bits takes quantizers only "
                                       f"({', '.join(operators_of('quant'))}), got {', '.join(operators)}")
    if not bits and all(family == "quant" for family in families):
        raise ConfigError("operators", "need at least one parameter-reducing operator (not only quantizers); "
                                       "for quantizers alone give a budget in bits")


def _check() -> None:
    for info in OPERATORS.values():
        method_info(info.slot, info.method)  # every operator names a registered method


_check()


#: Checkpoint layouts ``slimscout apply --format`` writes (``compress.export``): ``slimscout`` keeps low-rank
#: layers as two factors; ``compressed-tensors`` packs quantised layers as vLLM and transformers load them.
EXPORT_FORMATS: tuple[str, ...] = ("slimscout", "compressed-tensors")
