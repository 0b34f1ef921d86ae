"""Peak resident memory on a random-initialised model with the shape of Llama-3.2-1B, in bfloat16.

Quality is meaningless (random weights); memory is real. The model (hidden 2048, intermediate 8192,
16 layers, 32 heads, 8 KV heads, vocab 128256, tied embeddings: 1.24 B parameters, 2.47 GB in
bfloat16) is made locally once and saved as safetensors with a stand-in tokenizer (MiniLM's; its
ids fit the vocabulary). Each phase then runs as the CLI in a process of its own, and its peak
resident set is compared with the model's own bytes. The peak is the kernel's high-water mark of
the process's resident set (``VmHWM``, file-backed pages included), read as it runs; ``ru_maxrss``
from ``wait4`` is recorded too. The driver itself never imports torch (the model is made in a
process of its own): a child's ``ru_maxrss`` starts from its parent's resident set at fork.

- ``load``: load the model in bfloat16 and exit (the floor: the model plus Python, torch, transformers);
- ``leveldb``: ``slimscout leveldb --operator sparsegpt`` (calibration block by block, then every
  layer reconstructed), with a small grid (keep 0.5, ``--levels`` levels either side) and few
  calibration tokens, so it finishes in reasonable time on a shared CPU;
- ``evaluate``: ``slimscout evaluate`` of a uniform magnitude-50% config on 512 holdout tokens
  (the dense reference pass, applying the config layer by layer, the compressed pass).

Usage: python -m bench.memory_1b [--phases load leveldb evaluate] [--levels 0] [--calibration-tokens 512]
Results: bench/results/memory/memory_1b.json (rewritten as each phase progresses and ends).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

OUT = Path("bench/results/memory/memory_1b.json")
SHAPE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
         "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 4096,
         "tie_word_embeddings": True, "rope_theta": 500000.0}


def make_model(directory: Path) -> int:
    """Write the random 1B-shaped model to ``directory`` (once); returns its bytes in bfloat16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.catalog import _tiny_tokenizer
    from compress.layers import count_params

    if not (directory / "model.safetensors").is_file():
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # never a float32 copy: 5 GB
        model = LlamaForCausalLM(LlamaConfig(**SHAPE))
        model.save_pretrained(directory, safe_serialization=True)
        _tiny_tokenizer().save_pretrained(directory)
        del model
    config = LlamaConfig.from_pretrained(directory)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    return count_params(skeleton) * 2


def _hwm_kib(pid: int) -> int:
    """The process's peak resident set so far (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_phase(name: str, argv: list[str], env: dict[str, str], results: dict[str, Any], logs: Path) -> None:
    """Run ``argv``; record its peak RSS (sampled as it runs, and ru_maxrss at its end) into ``results``."""
    row: dict[str, Any] = {"command": " ".join(argv), "status": "running"}
    results["phases"][name] = row
    started = time.perf_counter()
    out, err = logs / f"{name}.stdout", logs / f"{name}.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        last_write = 0.0
        while not done.is_set():
            peak[0] = max(peak[0], _hwm_kib(proc.pid))
            if time.perf_counter() - last_write > 30:  # a killed run still leaves its peak so far
                row.update(hwm_rss_bytes=peak[0] * 1024, seconds=round(time.perf_counter() - started, 1))
                _write(results)
                last_write = time.perf_counter()
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # we reap it ourselves: its own rusage, not all children's
    done.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    row.update(returncode=code, seconds=round(time.perf_counter() - started, 1), ru_maxrss_bytes=usage.ru_maxrss * 1024,
               hwm_rss_bytes=peak[0] * 1024, status="done" if code == 0 else "failed")
    text = out.read_text()
    try:
        row["output"] = json.loads(text)
    except json.JSONDecodeError:
        row["stdout_tail"] = text[-2000:]
    row["stderr_tail"] = err.read_text()[-1500:]
    _write(results)


def _write(results: dict[str, Any]) -> None:
    """Write ``results``, keeping the phases another run (e.g. one in parallel) recorded in the file."""
    if OUT.is_file():
        try:
            others = json.loads(OUT.read_text()).get("phases", {})
        except json.JSONDecodeError:  # written by a run in parallel at this very moment
            others = {}
        results["phases"] = {**{k: v for k, v in others.items() if k not in results["own"]},
                             **{k: v for k, v in results["phases"].items() if k in results["own"]}}
    model_bytes = results["model_bytes"]
    for row in results["phases"].values():
        peak = max(row.get("ru_maxrss_bytes", 0), row.get("hwm_rss_bytes", 0))
        if peak:
            row["peak_rss_bytes"] = peak
            row["peak_over_model_bytes"] = round(peak / model_bytes, 3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_name(f".{OUT.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in results.items() if k != "own"}, indent=2))
    tmp.replace(OUT)  # whole files only: a run in parallel reads it too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the model-making child
    parser.add_argument("--phases", nargs="+", default=["load", "leveldb", "evaluate"],
                        choices=["load", "leveldb", "evaluate"])
    parser.add_argument("--levels", type=int, default=0, help="sparsegpt levels either side of keep 0.5")
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=512, help="evaluation tokens")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slimscout-memory-1b",
                        help="model and cache directory (kept between runs)")
    args = parser.parse_args()
    model_dir, cache = args.work / "model", args.work / "cache"
    config = args.work / "magnitude-50.json"
    if args.prepare:
        model_dir.mkdir(parents=True, exist_ok=True)
        print(make_model(model_dir))
        _write_config(model_dir, config)
        return
    prepared = subprocess.run([sys.executable, "-m", "bench.memory_1b", "--prepare", "--work", str(args.work)],
                              check=True, capture_output=True, text=True)
    model_bytes = int(prepared.stdout.split()[-1])
    results: dict[str, Any] = {
        "model": "random LlamaForCausalLM, Llama-3.2-1B shape", "shape": SHAPE, "dtype": "bfloat16",
        "model_bytes": model_bytes, "target": "peak RSS <= 1.5 x model_bytes",
        "threads": os.environ.get("OMP_NUM_THREADS", "torch default"), "phases": {}, "own": args.phases,
    }
    env = {**os.environ, "SLIMSCOUT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "slimscout.cli"]
    model_opts = ["--model", str(model_dir), "--dtype", "bfloat16"]
    phases = {
        "load": [sys.executable, "-c", f"from compress.catalog import load_model; "
                                       f"load_model({str(model_dir)!r}, dtype='bfloat16')"],
        "leveldb": [*cli, "leveldb", *model_opts, "--operator", "sparsegpt", "--keep", "0.5",
                    "--levels", str(args.levels), "--calibration-tokens", str(args.calibration_tokens), "--json"],
        "evaluate": [*cli, "evaluate", *model_opts, "--config", str(config), "--split", "holdout",
                     "--tokens", str(args.tokens), "--json"],
    }
    for name in args.phases:
        run_phase(name, phases[name], env, results, args.work)


def _write_config(model_dir: Path, path: Path) -> None:
    """Uniform 50% magnitude sparsity on every linear layer (needs no calibration)."""
    from transformers import LlamaConfig

    from compress.config import CompressionConfig, LayerConfig, SparsitySpec
    from compress.layers import PROJECTION_TYPES

    layers = LlamaConfig.from_pretrained(model_dir).num_hidden_layers
    modules = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    assert set(modules) == set(PROJECTION_TYPES)
    spec = LayerConfig(sparsity=SparsitySpec(0.5, "magnitude"))
    CompressionConfig(str(model_dir), {f"model.layers.{i}.{m}": spec for i in range(layers)
                                       for m in modules.values()}).save(path)


if __name__ == "__main__":
    main()
