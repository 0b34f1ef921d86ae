"""Budgets in bits on the real model: GPTQ against RTN and SDQ at the same stored bits per weight.

Usage::

    OMP_NUM_THREADS=1 nice -n 5 python -m bench.bits [--rows NAME ...]   # hours on 2 shared CPU cores

Rows (each through the CLI, exactly as a user runs it; holdout, 4096 tokens):

- ``{rtn,gptq}-int{4,3}-g64``: every linear layer at 4 (3) bits, group 64 (hand-written configs).
- ``uniform-{gptq,int4,sdq}-4.5``: ``slimscout baseline --method uniform --operator OP --budget-bits 4.5``.
- ``handmade-gptq-3-4-8-4.5``: a hand-made {3, 4, 8}-bit GPTQ allocation at 4.5 bits (``_handmade_mixed``).
- ``sensitivity-gptq-4.5``: ``slimscout baseline --method sensitivity --operator gptq --budget-bits 4.5``
  (a mixed-precision allocation from the measured per-block damage).

Each row is ``slimscout evaluate --json`` of the config plus the config's bit-width mix, appended to
``bench/results/bits/rows.json`` as soon as it is measured (a rerun skips rows already there).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "bits"
MODEL = "smollm2-135m"
BUDGET_BITS = 4.5
TOKENS = 4096


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "slimscout.cli", *args], check=True, capture_output=True, text=True)
    return done.stdout


def _uniform_config(path: Path, method: str, bits: int, group: int) -> list[str]:
    from compress.catalog import load_model
    from compress.layers import linear_layers

    layers = linear_layers(load_model(MODEL).model)
    quant: dict[str, Any] = {"bits": bits, "group_size": group, "outliers": None}
    if method != "rtn":
        quant["method"] = method
    doc = {"schema": "slimscout.config/v1", "model_id": MODEL,
           "layers": {layer.name: {"quant": quant} for layer in layers}, "meta": {"method": f"uniform {method}"}}
    path.write_text(json.dumps(doc, indent=1))
    return ["python -m bench.bits (writes the config)"]


def _handmade_mixed(path: Path) -> list[str]:
    """GPTQ {3, 4, 8} bits, group 64, at 4.5 bits per weight by hand (not searched, not measured first).

    8 bits: every k_proj and v_proj (the small GQA projections, 6.25% of the weights) and the
    down_proj of the first and last two blocks (3.33%); 3 bits: up_proj of the 16 middle blocks
    (13.33%); 4 bits elsewhere. 4.25 + 4 * 0.0958 - 0.1333 = 4.5 bits per weight.
    """
    from compress.catalog import load_model
    from compress.layers import linear_layers

    layers = linear_layers(load_model(MODEL).model)
    last = max(layer.block for layer in layers)

    def bits(layer: Any) -> int:
        if layer.type in ("k", "v") or (layer.type == "down" and (layer.block < 2 or layer.block > last - 2)):
            return 8
        if layer.type == "up" and 7 <= layer.block < 23:
            return 3
        return 4

    doc = {"schema": "slimscout.config/v1", "model_id": MODEL, "meta": {"method": "hand-made gptq {3,4,8}"},
           "layers": {layer.name: {"quant": {"bits": bits(layer), "group_size": 64, "outliers": None,
                                             "method": "gptq"}} for layer in layers}}
    path.write_text(json.dumps(doc, indent=1))
    return ["python -m bench.bits (writes the config)"]


def _baseline(path: Path, method: str, operator: str) -> list[str]:
    args = ["baseline", "--model", MODEL, "--method", method, "--operator", operator,
            "--budget-bits", str(BUDGET_BITS), "--out", str(path)]
    _cli(*args)
    return ["slimscout " + " ".join(args)]


ROWS: dict[str, Any] = {
    "rtn-int4-g64": lambda p: _uniform_config(p, "rtn", 4, 64),
    "gptq-int4-g64": lambda p: _uniform_config(p, "gptq", 4, 64),
    "rtn-int3-g64": lambda p: _uniform_config(p, "rtn", 3, 64),
    "gptq-int3-g64": lambda p: _uniform_config(p, "gptq", 3, 64),
    "uniform-gptq-4.5": lambda p: _baseline(p, "uniform", "gptq"),
    "uniform-int4-4.5": lambda p: _baseline(p, "uniform", "int4"),
    "uniform-sdq-4.5": lambda p: _baseline(p, "uniform", "sdq"),
    "handmade-gptq-3-4-8-4.5": _handmade_mixed,
    "sensitivity-gptq-4.5": lambda p: _baseline(p, "sensitivity", "gptq"),
}


def bit_mix(path: Path) -> dict[str, float]:
    """Share of the linear weights at each stored setting (``16`` = dense), e.g. {"gptq-4": 0.93, ...}."""
    from compress.catalog import load_model
    from compress.config import load_config
    from compress.layers import linear_layers

    config = load_config(path)
    layers = linear_layers(load_model(MODEL).model)
    total = sum(layer.params for layer in layers)
    mix: collections.Counter[str] = collections.Counter()
    for layer in layers:
        quant = config.layers[layer.name].quant if layer.name in config.layers else None
        key = "dense" if quant is None else f"{quant.method}-{quant.bits}" + (f"+{quant.outliers}" if quant.outliers
                                                                              else "")
        mix[key] += layer.params / total
    return dict(sorted(mix.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--out", default="rows.json", help="file under bench/results/bits (one per process)")
    args = parser.parse_args()
    out = RESULTS / args.out
    rows: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.rows:
        if name in rows:
            continue
        path = RESULTS / f"{name}.config.json"
        commands = ROWS[name](path)
        evaluate = ["evaluate", "--model", MODEL, "--config", str(path), "--split", "holdout",
                    "--tokens", str(TOKENS), "--json"]
        result = json.loads(_cli(*evaluate))
        rows[name] = {"commands": [*commands, "slimscout " + " ".join(evaluate)], "mix": bit_mix(path),
                      **{key: result[key] for key in ("ppl", "kl", "bits_per_weight", "bytes", "seconds", "timing")}}
        out.write_text(json.dumps(rows, indent=1))
        print(name, rows[name]["ppl"], rows[name]["bits_per_weight"], flush=True)


if __name__ == "__main__":
    main()
