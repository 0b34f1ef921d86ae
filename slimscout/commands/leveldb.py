"""``slimscout leveldb``: build (or finish) a model's level database for a reconstruction operator."""

from __future__ import annotations

import argparse
import time
from typing import Any

from slimscout.commands._common import add_model_options, non_negative_int, note, positive_int, print_result, progress


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("leveldb", help="build a per-layer level database (SparseGPT keep levels, GPTQ bits)")
    parser.add_argument("--model", required=True, help="catalog id, local directory, or hub id")
    parser.add_argument("--operator", choices=("sparsegpt", "gptq"), required=True)
    parser.add_argument("--keep", type=float, default=0.5, help="sparsegpt: the keep fraction at level 0")
    parser.add_argument("--levels", type=non_negative_int, default=8, help="sparsegpt: levels above and below")
    parser.add_argument("--step", type=positive_int, default=None,
                        help="sparsegpt: weights per level, the same for every layer (default: EvoPress's rule)")
    parser.add_argument("--bits", type=positive_int, nargs="+", default=[2, 3, 4, 8], help="gptq: bit widths")
    parser.add_argument("--group-size", type=positive_int, default=None,
                        help="gptq: inputs per scale (default 128 where it divides the layer, else 64)")
    parser.add_argument("--calibration-tokens", type=positive_int, default=None)
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compress.heap import fix_mmap_threshold
    from compress.leveldb import BitsGrid, KeepGrid, LevelDatabase, LevelGrid
    from compress.session import ModelSession

    fix_mmap_threshold()  # freed tensors leave the process at once (compress.heap)
    grid: LevelGrid = (KeepGrid(keep=args.keep, levels=args.levels, step=args.step) if args.operator == "sparsegpt"
                       else BitsGrid(bits=tuple(args.bits), group_size=args.group_size))
    note(f"loading {args.model} …")
    kwargs: dict[str, Any] = {}
    if args.calibration_tokens:
        kwargs["calibration_tokens"] = args.calibration_tokens
    session = ModelSession.open(args.model, device=args.device, dtype=args.model_dtype, **kwargs)
    start = time.perf_counter()
    with progress(not args.json) as bar:
        task = bar.add_task(f"{args.operator} levels", total=len(session.layers), status="") if bar else None

        def on_cache(step: str, done: int, total: int) -> None:  # the calibration statistics the build needs
            if bar is not None and task is not None:
                bar.update(task, description=step, completed=done, total=total)

        def on_layer(done: int, total: int, name: str) -> None:
            if bar is not None and task is not None:
                bar.update(task, description=f"{args.operator} levels", completed=done, total=total, status=name)

        with session.reporting(on_cache):
            db = LevelDatabase.build(session, args.operator, grid, progress=on_layer)
    print_result({
        "directory": str(db.directory),
        "operator": args.operator,
        "grid": grid.spec(),
        "layers": len(session.layers),
        "layers_built": len(db.built_layers),
        "disk_bytes": db.disk_bytes(),
        "seconds": time.perf_counter() - start,
    }, as_json=args.json)
    return 0
