"""Measure a recovered (or any exported) model against the *dense* model's reference.

``slimscout evaluate --model DIR`` measures DIR against itself (its own reference), so its KL is 0
and an encoder's cosine is 1: right for perplexity, useless for an encoder. This measures DIR's
outputs against the dense catalog model's reference on the same tokens (cosine for encoders,
perplexity and KL for causal LMs).

Usage: python -m bench.recover_against_dense --dense minilm-l6 --model DIR --split holdout [--tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import sys

from compress.catalog import load_model
from compress.session import ModelSession


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dense", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="holdout", choices=["calibration", "search", "holdout"])
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args(argv)
    session = ModelSession.open(args.dense)
    evaluator = session.evaluator(split=args.split, tokens=args.tokens)
    metrics = evaluator.evaluate(load_model(args.model).model)
    json.dump({"dense": args.dense, "model": args.model, "split": args.split, "tokens": args.tokens,
               "ppl": metrics.ppl, "kl": metrics.kl, "cosine": metrics.cosine}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
