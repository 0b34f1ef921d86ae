"""Float32 against float64 where the level database build now saves memory on wide layers.

Layers over ``FLOAT64_MAX_INPUTS`` inputs (none of smollm2-135m's; a 1B Llama's down_proj) have
their inverse Hessian factored in float32 and their calibration Gram summed in float32. This
measures what that costs on the real model, by forcing every layer onto the float32 path:

- ``factor``: every layer of some blocks of smollm2-135m (``--blocks``, default 0, 15, 29; Grams
  of 4,096 Lee news tokens, from the session's cache), SparseGPT at keep 0.5 and GPTQ 4-bit
  (default group size), damping 0.1 (the operators'), with the factor in float64 and in float32:
  the relative output error tr(ΔW G ΔWᵀ)/tr(W G Wᵀ) of each, and the relative change of the
  float32 error;
- ``grams``: the calibration Grams summed in float32 rather than float64 (chunks of 512 tokens):
  their relative Frobenius difference, and SparseGPT keep 0.5 from each, measured on the
  float64-summed Gram;
- ``wide`` (with ``--wide-model DIR --wide-grams DIR``): the same factor comparison on one
  8192-input down_proj of the 1B-shaped model of ``bench.memory_1b`` (its Gram from a
  ``--max-blocks`` build's cache), where float32 really is used; SparseGPT only.

Usage: python -m bench.factor_precision [--checks factor grams wide] [--blocks 0 15 29]
       [--wide-model DIR --wide-grams DIR]
Results: bench/results/memory/precision.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from compress import calibration
from compress.calibration import CalibrationStats, collect_stats
from compress.operators import gptq as gptq_operator
from compress.operators import sparsegpt as sparsegpt_operator
from compress.operators.base import output_error
from compress.ops import default_group_size, gptq, obs, sparsegpt
from compress.session import ModelSession

OUT = Path("bench/results/memory/precision.json")


def _factor(gram: Tensor, float32: bool) -> dict[str, obs.InverseHessian]:
    """The factors SparseGPT's and GPTQ's damping give, in float32 (every layer wide) or float64."""
    limit = obs.FLOAT64_MAX_INPUTS
    obs.FLOAT64_MAX_INPUTS = 0 if float32 else 1 << 30
    try:
        return {"sparsegpt": obs.inverse_hessian_factor(gram, percdamp=sparsegpt_operator.DAMPENING),
                "gptq": obs.inverse_hessian_factor(gram, percdamp=gptq_operator.DAMPENING)}
    finally:
        obs.FLOAT64_MAX_INPUTS = limit


def _errors(weight: Tensor, gram: Tensor, factors: dict[str, obs.InverseHessian], gptq_too: bool) -> dict[str, float]:
    out = {"sparsegpt_keep0.5": output_error(weight, sparsegpt(weight, factors["sparsegpt"], sparsity=0.5), gram)}
    if gptq_too:
        group = default_group_size(weight.shape[1])
        out["gptq_4bit"] = output_error(weight, gptq(weight, factors["gptq"], bits=4, group_size=group).weight, gram)
    return out


def _compare(weight: Tensor, gram: Tensor, *, gptq_too: bool = True) -> dict[str, Any]:
    in64 = _errors(weight, gram, _factor(gram, float32=False), gptq_too)
    in32 = _errors(weight, gram, _factor(gram, float32=True), gptq_too)
    return {"float64": in64, "float32": in32,
            "relative_change": {k: (in32[k] - in64[k]) / in64[k] for k in in64}}


def _summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in next(iter(rows.values()))["relative_change"]:
        changes = [row["relative_change"][key] for row in rows.values()]
        out[key] = {"mean_relative_change": statistics.fmean(changes),
                    "max_abs_relative_change": max(abs(c) for c in changes),
                    "mean_error_float64": statistics.fmean(row["float64"][key] for row in rows.values()),
                    "mean_error_float32": statistics.fmean(row["float32"][key] for row in rows.values())}
    return out


def factor_check(session: ModelSession, blocks: list[int]) -> dict[str, Any]:
    stats = session.stats()
    rows = {layer.name: _compare(session.dense_weight(layer.name), stats.gram(layer.name))
            for layer in session.layers if layer.block in blocks}
    return {"layers": len(rows), "summary": _summary(rows), "per_layer": rows}


def gram_check(session: ModelSession, blocks: list[int]) -> dict[str, Any]:
    reference = session.stats()
    limit = calibration.FLOAT64_MAX_INPUTS
    calibration.FLOAT64_MAX_INPUTS = 0  # every layer's sum in float32
    try:
        summed32 = collect_stats(session.model, session.layers, session._calibration_ids())
    finally:
        calibration.FLOAT64_MAX_INPUTS = limit
    rows: dict[str, dict[str, Any]] = {}
    for layer in session.layers:
        g64, g32 = reference.gram(layer.name), summed32.gram(layer.name)
        if layer.name != reference.leader[layer.name] or layer.block not in blocks:
            continue  # a shared Gram: once, under its leader
        weight = session.dense_weight(layer.name)
        from64 = sparsegpt(weight, g64, sparsity=0.5, percdamp=sparsegpt_operator.DAMPENING)
        from32 = sparsegpt(weight, g32, sparsity=0.5, percdamp=sparsegpt_operator.DAMPENING)
        e64, e32 = output_error(weight, from64, g64), output_error(weight, from32, g64)
        difference = float((g32.double() - g64.double()).norm() / g64.double().norm())
        rows[layer.name] = {"gram_relative_difference": difference,
                            "sparsegpt_error_from_float64_sums": e64, "sparsegpt_error_from_float32_sums": e32,
                            "relative_change": (e32 - e64) / e64}
    return {"grams": len(rows), "tokens": summed32.n_tokens,
            "max_gram_relative_difference": max(r["gram_relative_difference"] for r in rows.values()),
            "max_abs_sparsegpt_relative_change": max(abs(r["relative_change"]) for r in rows.values()),
            "per_gram": rows}


def wide_check(model_dir: Path, grams_dir: Path) -> dict[str, Any]:
    from safetensors import safe_open

    stats = CalibrationStats.load(grams_dir, keep_in_memory=False, device=torch.device("cpu"))
    if stats is None:
        raise SystemExit(f"no finished Grams in {grams_dir}")
    name = "model.layers.0.mlp.down_proj"
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as fh:
        weight = fh.get_tensor(f"{name}.weight").float()
    start = time.perf_counter()
    row = _compare(weight, stats.gram(name), gptq_too=False)  # SparseGPT only: a 2048 x 8192 sweep is slow here
    return {"layer": name, "shape": list(weight.shape), **row, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", nargs="+", default=["factor", "grams"], choices=["factor", "grams", "wide"])
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 15, 29], help="smollm2 blocks to compare")
    parser.add_argument("--wide-model", type=Path)
    parser.add_argument("--wide-grams", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    session = ModelSession.open("smollm2-135m") if {"factor", "grams"} & set(args.checks) else None
    for check in args.checks:
        start = time.perf_counter()
        if check == "factor":
            assert session is not None
            results["factor"] = factor_check(session, args.blocks)
        elif check == "grams":
            assert session is not None
            results["grams"] = gram_check(session, args.blocks)
        else:
            if args.wide_model is None or args.wide_grams is None:
                parser.error("wide needs --wide-model and --wide-grams")
            results["wide"] = wide_check(args.wide_model, args.wide_grams)
        results[check]["seconds"] = round(time.perf_counter() - start, 1)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        on_disk = json.loads(OUT.read_text()) if OUT.is_file() else {}  # another run's checks are kept
        OUT.write_text(json.dumps({**on_disk, check: results[check]}, indent=1))
        print(check, json.dumps({k: v for k, v in results[check].items() if not k.startswith("per_")}, indent=1))


if __name__ == "__main__":
    main()
