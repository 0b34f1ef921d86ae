"""Reconstruction operators on the real model: holdout perplexity of uniform SparseGPT vs Wanda, GPTQ vs RTN.

Usage::

    python -m bench.reconstruction quality   # ~1 h on 2 shared CPU cores
    python -m bench.reconstruction leveldb   # database build time, disk size, apply time

Every layer gets the same settings (the uniform Wanda baseline's per-layer ratios, written by
``slimscout baseline --method uniform --operator wanda``, so both operators keep the same weights).
SparseGPT and GPTQ work from the dense model's calibration Grams (one shot, not sequential). Each row
is appended to ``bench/results/reconstruction/<suite>.json`` as soon as it is measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.reconstruction_leveldb import record_row
from compress.config import load_config
from compress.corpora import DEFAULT_DATASET
from compress.ops import default_group_size, fake_quant, gptq, sparsegpt
from compress.session import ModelSession

RESULTS = Path(__file__).parent / "results" / "reconstruction"
MODEL = "smollm2-135m"
KEEPS = (0.5, 0.4, 0.3)




def _wanda_config_path(keep: float) -> Path:
    path = RESULTS / f"wanda-uniform-{keep}.json"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "slimscout.cli", "baseline", "--model", MODEL, "--method", "uniform",
                        "--operator", "wanda", "--budget", str(keep), "--out", str(path)], check=True)
    return path


Make = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def _measure_weights(session: ModelSession, evaluator: Any, make: Make) -> dict[str, float]:
    """Write ``make(name, dense, gram)`` into every layer, evaluate, restore dense."""
    stats = session.stats()
    start = time.perf_counter()
    with torch.no_grad():
        for name, module in session.modules.items():
            module.weight.copy_(make(name, session.dense_weight(name), stats.gram(name)))
            session._applied.add(name)
    compress_s = time.perf_counter() - start
    metrics = evaluator.evaluate()
    session.restore()
    return {"ppl": metrics.ppl, "kl": metrics.kl, "compress_s": compress_s}


def quality(
    out: Path, rows: set[str] | None, calibration_tokens: int | None = None, percdamp: float = 0.01,
    dataset: str = DEFAULT_DATASET,
) -> None:
    """Measure every row (or only the rows named in ``rows``) on ``dataset``'s holdout split.

    A non-default calibration size, damping or evaluation corpus is appended to the row names
    (``-calib13996``, ``-damp0.1``, ``-enwiki``). Calibration is always the default corpus's.
    """
    calibration = {"calibration_tokens": calibration_tokens} if calibration_tokens else {}
    session = ModelSession.open(MODEL, **calibration)
    suffix = (f"-calib{calibration_tokens}" if calibration_tokens else "") + (
        f"-damp{percdamp}" if percdamp != 0.01 else "") + (f"-{dataset}" if dataset != DEFAULT_DATASET else "")
    evaluator = session.evaluator(dataset=dataset, split="holdout", tokens=4096)
    session.stats()

    def wanted(name: str) -> bool:
        return rows is None or name in rows

    def measure(name: str, make: Make, **fields: Any) -> None:
        if wanted(name):
            record_row(out, {"name": name + suffix, **fields, "calibration_tokens": session.calibration_tokens,
                          "percdamp": percdamp, **_measure_weights(session, evaluator, make)})

    if wanted("dense"):
        dense = evaluator.dense_metrics()
        record_row(out, {"name": "dense" + suffix, "ppl": dense.ppl, "kl": 0.0})
    for keep in KEEPS:
        config = load_config(_wanda_config_path(keep))
        ratios = {name: cfg.sparsity.ratio for name, cfg in config.layers.items() if cfg.sparsity}
        if wanted(f"wanda-{keep}"):
            with session.applied(config):
                m = evaluator.evaluate()
            record_row(out, {"name": f"wanda-{keep}{suffix}", "keep": keep, "ppl": m.ppl, "kl": m.kl})
        measure(f"sparsegpt-{keep}",
                lambda n, w, h, r=ratios: sparsegpt(w, h, sparsity=r[n], percdamp=percdamp), keep=keep)
    for bits in (4, 3):
        measure(f"rtn-int{bits}-g64", lambda n, w, h, b=bits: fake_quant(w, b, 64), bits=bits, group_size=64)
        # Symmetric grid (the one fake_quant stores), static groups unless named otherwise.
        variants: dict[str, dict[str, Any]] = {
            "static": {"group_size": 64},
            "static-actorder": {"group_size": 64, "act_order": True},
            "dynamic": {"group_size": 64, "static_groups": False},
        }
        for label, kwargs in variants.items():
            measure(f"gptq-int{bits}-g64-{label}",
                    lambda n, w, h, b=bits, k=kwargs: gptq(w, h, bits=b, percdamp=percdamp, **k).weight,
                    bits=bits, **kwargs)
        measure(f"gptq-int{bits}-g128or64-static",
                lambda n, w, h, b=bits: gptq(
                    w, h, bits=b, group_size=default_group_size(w.shape[1]), percdamp=percdamp).weight,
                bits=bits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=("quality", "leveldb"))
    parser.add_argument("--calibration-tokens", type=int, default=None, help="quality: calibration size")
    parser.add_argument("--percdamp", type=float, default=0.01, help="quality: Hessian damping of SparseGPT/GPTQ")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="quality: the holdout corpus (calibration stays "
                                                                   "the default's)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default <suite>.json)")
    parser.add_argument("--rows", help="only these comma-separated rows: quality row names (e.g. rtn-int3-g64), "
                                         "leveldb operators (sparsegpt, gptq)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, int(os.environ.get("BENCH_THREADS", "1"))))
    out = args.out or RESULTS / f"{args.suite}.json"
    if args.suite == "quality":
        quality(out, set(args.rows.split(",")) if args.rows else None, args.calibration_tokens, args.percdamp,
                args.dataset)
    else:
        from bench.reconstruction_leveldb import leveldb_bench

        leveldb_bench(out, set(args.rows.split(",")) if args.rows else None)


if __name__ == "__main__":
    main()
