"""Level database on smollm2-135m: build time, disk size, apply time per trial (see bench/reconstruction.py)."""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from compress.leveldb import LEVEL_OPERATORS, BitsGrid, KeepGrid, LevelDatabase, LevelGrid
from compress.ops import gptq, sparsegpt
from compress.session import ModelSession

MODEL = "smollm2-135m"
TRIALS = 20


def record_row(out: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the JSON list in ``out`` (replacing a row of the same name), and print it."""
    rows = json.loads(out.read_text()) if out.is_file() else []
    rows = [r for r in rows if r["name"] != row["name"]] + [row]
    out.write_text(json.dumps(rows, indent=2))
    print(json.dumps(row), flush=True)


def _random_levels(db: LevelDatabase, names: list[str], rng: random.Random, swaps: int = 60) -> dict[str, int]:
    """Budget-neutral random configs: start at level 0 everywhere, move pairs one level up / down."""
    levels = dict.fromkeys(names, 0)
    for _ in range(swaps):
        up, down = rng.sample(names, 2)
        if levels[up] + 1 in db.levels(up) and levels[down] - 1 in db.levels(down):
            levels[up] += 1
            levels[down] -= 1
    return levels


def _mutation(db: LevelDatabase, levels: dict[str, int], rng: random.Random) -> dict[str, int]:
    """EvoPress's offspring: min(U{1,3}, U{1,3}) layers one level up and as many one level down
    (a bits grid: that many layers moved to another of their levels)."""
    child = dict(levels)
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        if db.operator != "sparsegpt":
            name = rng.choice(list(child))
            child[name] = rng.choice([lv for lv in db.levels(name) if lv != child[name]])
            continue
        up = rng.choice([n for n in child if child[n] + 1 in db.levels(n)])
        down = rng.choice([n for n in child if n != up and child[n] - 1 in db.levels(n)])
        child[up] += 1
        child[down] -= 1
    return child


def _bench_one(out: Path, session: ModelSession, evaluator: Any, operator: str, grid: LevelGrid) -> None:
    name = f"leveldb-{operator}-{grid.spec()}"
    start = time.perf_counter()
    last = [start]
    per_layer: list[float] = []

    def progress(done: int, total: int, layer: str) -> None:
        now = time.perf_counter()
        per_layer.append(now - last[0])
        last[0] = now
        if done % 21 == 0 or done == total:
            print(f"{operator}: {done}/{total} layers, {now - start:.0f} s", flush=True)

    db = LevelDatabase.build(session, operator, grid, progress=progress)
    build_s = time.perf_counter() - start
    names = [layer.name for layer in session.layers]
    rng = random.Random(0)
    zero = {n: (0 if operator == "sparsegpt" else min(db.levels(n))) for n in names}
    first_apply_s = db.apply(session, zero)
    ppl_level0 = evaluator.evaluate().ppl if operator == "sparsegpt" else None
    times = []
    for _ in range(TRIALS):
        levels = _random_levels(db, names, rng) if operator == "sparsegpt" else {
            n: rng.choice(db.levels(n)) for n in names}
        times.append(db.apply(session, levels))
    # A search's trials: each an offspring of the last (only the moved layers are read and written).
    offspring_times = []
    levels = zero
    db.apply(session, levels)
    for _ in range(TRIALS):
        levels = _mutation(db, levels, rng)
        offspring_times.append(db.apply(session, levels))
    session.restore()
    stats = session.stats()
    probe = names[0]
    if operator == "sparsegpt":
        params = db.manifest["layers"][probe]["levels"]["1"]
        direct = sparsegpt(session.dense_weight(probe), stats.gram(probe), sparsity=params["sparsity"],
                           percdamp=LEVEL_OPERATORS[operator].percdamp)
        identical = bool(torch.equal(db.weight(probe, 1), direct))
    else:
        bits = max(db.levels(probe))
        params = db.manifest["layers"][probe]["levels"][str(bits)]
        direct = gptq(session.dense_weight(probe), stats.gram(probe), bits=bits, group_size=params["group_size"],
                      percdamp=LEVEL_OPERATORS[operator].percdamp).weight
        identical = bool(torch.equal(db.weight(probe, bits), direct))
    record_row(out, {
        "name": name, "operator": operator, "grid": grid.spec(), "layers": len(names),
        "levels_per_layer": sorted({len(db.levels(n)) for n in names}),
        "build_s": build_s, "layers_built_now": len(db.built_layers),
        "slowest_layer_s": max(per_layer) if per_layer else None,
        "disk_bytes": db.disk_bytes(), "disk_MiB": db.disk_bytes() / 2**20,
        "first_apply_s": first_apply_s, "apply_s_median": statistics.median(times),
        "apply_s_min": min(times), "apply_s_max": max(times), "trials": TRIALS,
        "offspring_apply_s_median": statistics.median(offspring_times),
        "offspring_apply_s_max": max(offspring_times),
        "holdout_ppl_level0": ppl_level0, "bit_identical_probe": identical,
        "torch_threads": torch.get_num_threads(), "loadavg_end": os.getloadavg(),
    })


GRIDS: dict[str, LevelGrid] = {"sparsegpt": KeepGrid(keep=0.5, levels=1), "gptq": BitsGrid(bits=(3, 4))}


def leveldb_bench(out: Path, operators: set[str] | None = None) -> None:
    session = ModelSession.open(MODEL)
    evaluator = session.evaluator(split="holdout", tokens=4096)
    for operator, grid in GRIDS.items():
        if operators is None or operator in operators:
            _bench_one(out, session, evaluator, operator, grid)
