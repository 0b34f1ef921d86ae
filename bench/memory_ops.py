"""The level database build's steps one at a time, at a 1B Llama's widest layer: peak memory of each.

Each step runs in a fresh process on its inputs (made first), after the kernel's peak-RSS mark is
reset to the current RSS (``/proc/self/clear_refs``), so ``VmHWM`` afterwards, less the RSS before,
is what the step itself added at its peak. Steps, at down_proj's shape (2048 x 8192; Gram 8192²):

- ``gram``: ``collect_stats`` of 512 calibration tokens through one block holding the layer
  (the Gram's accumulator and its conversion to float32 for storing);
- ``factor``: the inverse Hessian factor from a Gram the caller owns (as the build now does:
  ``overwrite=True`` where the code has it);
- ``sweep``: the SparseGPT sweep at keep 0.5 given the factor;
- ``levels``: one layer's file of 17 levels (``--levels 8``) of float32 weights: collected and
  written with ``save_file`` (before) or spooled one at a time (now).

To measure other code (e.g. the commit before the change), run this file from that tree's root
(``python -m`` imports from the current directory first) with ``--out`` pointing back here;
``--label`` names the rows.

Usage: python -m bench.memory_ops --label now [--steps gram factor sweep levels] [--out FILE]
Results: bench/results/memory/ops.json (rows keyed by label and step)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path("bench/results/memory/ops.json")
ROWS, COLS, TOKENS, LEVELS = 2048, 8192, 512, 17


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns that RSS in kB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _kib("VmRSS")


def _gram(tmp: Path) -> dict[str, Any]:
    import torch
    from torch import nn

    from compress.calibration import collect_stats
    from compress.layers import linear_layers

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down_proj = nn.Linear(COLS, ROWS, bias=False, dtype=torch.bfloat16)

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return self.down_proj(hidden_states)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, COLS, dtype=torch.bfloat16)
            self.layers = nn.ModuleList([Block()])

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.layers[0](self.embed(input_ids))

    model = Model()
    tokens = torch.randint(0, 1000, (TOKENS,), generator=torch.Generator().manual_seed(0))
    stored: list[int] = []
    base = _reset_peak()
    collect_stats(model, linear_layers(model), tokens, TOKENS, on_block=lambda g: stored.extend(
        int(t.nbytes) for t in g.values()))
    return {"base_kib": base, "stored_bytes": stored}


def _make_gram() -> Any:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * TOKENS, COLS, generator=gen)
    return x.T @ x  # float32 [COLS, COLS], of rank 1024: damping makes it definite


def _factor(tmp: Path) -> dict[str, Any]:
    import inspect

    from compress.ops import obs

    gram = _make_gram()
    overwrite = "overwrite" in inspect.signature(obs.inverse_hessian_factor).parameters
    base = _reset_peak()
    kwargs: dict[str, Any] = {"overwrite": True} if overwrite else {}
    inverse = obs.inverse_hessian_factor(gram, percdamp=0.1, **kwargs)
    return {"base_kib": base, "overwrite": overwrite, "factor_dtype": str(inverse.factor.dtype)}


def _sweep(tmp: Path) -> dict[str, Any]:
    import torch

    from compress.ops import obs

    gram = _make_gram()
    inverse = obs.inverse_hessian_factor(gram, percdamp=0.1)
    del gram
    weight = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(1))
    base = _reset_peak()
    _, keep = obs.obs_sweep(weight, inverse, blocksize=128, prune_per_row=COLS // 2)
    return {"base_kib": base, "zeros_per_row": int((~keep[0]).sum())}


def _levels(tmp: Path) -> dict[str, Any]:
    import torch

    path = tmp / "layer.safetensors"
    gen = torch.Generator().manual_seed(2)
    base = _reset_peak()
    try:
        from compress.spooled_safetensors import SpooledSafetensors
    except ImportError:  # before: every level held, then written together
        from safetensors.torch import save_file

        tensors = {f"{level}.weight": torch.randn(ROWS, COLS, generator=gen) for level in range(LEVELS)}
        save_file(tensors, str(path))
        how = "save_file"
    else:
        with SpooledSafetensors(path) as out:
            for level in range(LEVELS):
                out.add(f"{level}.weight", torch.randn(ROWS, COLS, generator=gen))
        how = "spooled"
    return {"base_kib": base, "how": how, "file_bytes": path.stat().st_size}


STEPS = {"gram": _gram, "factor": _factor, "sweep": _sweep, "levels": _levels}


def _child(step: str) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        row = STEPS[step](Path(tmp))
        row["seconds"] = round(time.perf_counter() - start, 1)
        row["peak_added_bytes"] = (_kib("VmHWM") - row["base_kib"]) * 1024
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names the rows (e.g. before, now)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    for step in args.steps:
        done = subprocess.run([sys.executable, "-m", "bench.memory_ops", "--label", args.label, "--child", step],
                              check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results = json.loads(args.out.read_text()) if args.out.is_file() else {}
        results.setdefault(args.label, {})[step] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(args.label, step, round(row["peak_added_bytes"] / 2**20), "MiB added at peak", row)


if __name__ == "__main__":
    main()
