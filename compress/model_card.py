"""The ``README.md`` model card an export carries: what was compressed, how, how well it measured, and how.

Every number on the card is computed from the config and the model (the allocation summary, the
budget) or was measured by ``slimscout apply`` before writing (perplexity against dense on a named
dataset split); a card written without a measurement says so instead of showing a number.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from compress.accounting import layer_cost
from compress.config import CompressionConfig, LayerConfig
from compress.layers import LinearLayer


@dataclass(frozen=True)
class CardMeasurement:
    """Perplexity of the compressed model and of the dense one on the same tokens."""

    dataset: str
    split: str
    tokens: int
    ppl: float
    dense_ppl: float


def operator_label(cfg: LayerConfig | None) -> str:
    """A short name for a layer's setting: ``dense``, ``sparse 50% (wanda)``, ``rank 64 + int4/g64`` …"""
    if cfg is None or cfg.is_dense:
        return "dense"
    parts = []
    if cfg.lowrank is not None:
        parts.append(f"rank ({cfg.lowrank.method})")
    if cfg.sparsity is not None:
        pattern = "" if cfg.sparsity.pattern == "unstructured" else f" {cfg.sparsity.pattern}"
        parts.append(f"sparse{pattern} ({cfg.sparsity.score})")
    if cfg.quant is not None:
        outliers = f"+{cfg.quant.outliers} outliers" if cfg.quant.outliers else ""
        parts.append(f"int{cfg.quant.bits}/g{cfg.quant.group_size}{outliers}")
    return " + ".join(parts)


def _allocation_rows(layers: Sequence[LinearLayer], config: CompressionConfig) -> list[str]:
    by_type: dict[str, list[float]] = defaultdict(list)
    bits_by_type: dict[str, list[float]] = defaultdict(list)
    ops_by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for layer in layers:
        cfg = config.layers.get(layer.name)
        cost = layer_cost(layer, cfg)
        by_type[layer.type].append(cost.params / layer.params)
        bits_by_type[layer.type].append(8 * cost.bytes / layer.params)
        ops_by_type[layer.type][operator_label(cfg)] += 1
    rows = ["| projection | layers | kept params (min / mean / max) | stored bits per weight (mean) | settings |",
            "| --- | --- | --- | --- | --- |"]
    for kind, kept in by_type.items():
        ops = ", ".join(f"{label} ×{count}" for label, count in ops_by_type[kind].most_common())
        rows.append(f"| {kind} | {len(kept)} | {min(kept):.3f} / {sum(kept) / len(kept):.3f} / {max(kept):.3f} "
                    f"| {sum(bits_by_type[kind]) / len(kept):.2f} | {ops} |")
    return rows


def _depth_rows(layers: Sequence[LinearLayer], config: CompressionConfig) -> list[str]:
    kept: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for layer in layers:
        kept[layer.block][0] += layer_cost(layer, config.layers.get(layer.name)).params
        kept[layer.block][1] += layer.params
    cells = [f"{block}: {params / total:.2f}" for block, (params, total) in sorted(kept.items())]
    return ["Kept fraction per block (block: kept): " + ", ".join(cells)]


def render(*, base_model: str, config: CompressionConfig, layers: Sequence[LinearLayer], export_format: str,
           dtype: str, measurement: CardMeasurement | None, command: str | None) -> str:
    """The card's Markdown text."""
    cost = [layer_cost(layer, config.layers.get(layer.name)) for layer in layers]
    params = sum(c.params for c in cost)
    dense_params = sum(layer.params for layer in layers)
    bits = 8 * sum(c.bytes for c in cost) / dense_params
    lines = [
        "---",
        f"base_model: {base_model}",
        "tags: [slimscout, compressed]",
        "---",
        "",
        f"# {base_model}, compressed by slimscout",
        "",
        f"- **Base model:** `{base_model}`",
        f"- **Budget:** {params:,} of {dense_params:,} parameters kept in the {len(layers)} compressible linear "
        f"layers (keep ratio {params / dense_params:.4f}); {bits:.2f} stored bits per weight on average "
        "(masks, indices and scales counted). Embeddings, norms and the LM head are not compressed.",
        f"- **Format:** {export_format}, weights in {dtype}.",
    ]
    if config.meta.get("method"):
        lines.append(f"- **How the allocation was found:** {config.meta['method']}"
                     + (f" (budget {config.meta['budget']})" if "budget" in config.meta else ""))
    lines += ["", "## Quality", ""]
    if measurement is None:
        lines.append("No perplexity was measured at export time. Measure it with "
                     "`slimscout evaluate --model <this directory> --split holdout`.")
    else:
        ratio = measurement.ppl / measurement.dense_ppl
        lines += [
            f"Perplexity on {measurement.tokens:,} tokens of the `{measurement.split}` split of "
            f"`{measurement.dataset}` (text the allocation was not chosen on):",
            "",
            "| model | perplexity |",
            "| --- | --- |",
            f"| dense `{base_model}` | {measurement.dense_ppl:.2f} |",
            f"| this model | {measurement.ppl:.2f} ({ratio:.2f}x dense) |",
            "",
            "Measured by `slimscout apply` on the compressed float32 weights before they were written"
            + (f" (then cast to {dtype})." if dtype != "float32" else "."),
        ]
    lines += ["", "## Allocation", "", *_allocation_rows(layers, config), "", *_depth_rows(layers, config)]
    lines += ["", "`slimscout_config.json` holds the full per-layer configuration.", ""]
    if command:
        lines += ["## How it was made", "", "```bash", command, "```", ""]
    return "\n".join(lines)
