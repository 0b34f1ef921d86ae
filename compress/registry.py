"""The operator vocabulary: every operator's name and family, in one place. Torch-free.

The API validates study requests against these names without importing torch; the compress
package attaches each operator's handler (what it needs from calibration, how it produces a
layer's weight, its exact cost) to the same names. A name not listed here is an error everywhere,
never a fallback.

Families:
- ``sparsity``: unstructured sparsity by a score (a keep ratio per layer).
- ``nm``: N:M structured sparsity (keep N/M, or dense).
- ``lowrank``: truncated factorisation (a rank per layer).
- ``quant``: a quantiser stacked on top of one of the above (changes bytes, not parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.errors import ConfigError

Family = Literal["sparsity", "nm", "lowrank", "quant"]
PARAM_FAMILIES: tuple[Family, ...] = ("sparsity", "nm", "lowrank")


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    family: Family
    summary: str

    @property
    def reduces_params(self) -> bool:
        return self.family in PARAM_FAMILIES


OPERATORS: dict[str, OperatorInfo] = {
    info.name: info
    for info in (
        OperatorInfo("wanda", "sparsity", "unstructured, |W|·‖X‖ per output row"),
        OperatorInfo("magnitude", "sparsity", "unstructured, |W| per output row"),
        OperatorInfo("nm-2:4", "nm", "2:4 structured sparsity (Wanda score)"),
        OperatorInfo("nm-4:8", "nm", "4:8 structured sparsity (Wanda score)"),
        OperatorInfo("svd", "lowrank", "truncated SVD of W"),
        OperatorInfo("svd-whitened", "lowrank", "SVD of W·S, S the Cholesky factor of the calibration Gram"),
        OperatorInfo("int8", "quant", "round-to-nearest int8, per-group scales"),
        OperatorInfo("int4", "quant", "round-to-nearest int4, per-group scales"),
        OperatorInfo("sdq", "quant", "1:8 outliers in 16 bit + int4 inliers"),
    )
}
OPERATOR_NAMES: tuple[str, ...] = tuple(OPERATORS)


def operator_info(name: str) -> OperatorInfo:
    """The registry entry of ``name``; a ConfigError naming the known operators otherwise."""
    try:
        return OPERATORS[name]
    except KeyError:
        raise ConfigError("operators", f"unknown operator {name!r} (one of {', '.join(OPERATOR_NAMES)})") from None
