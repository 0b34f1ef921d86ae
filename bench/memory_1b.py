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

``--max-blocks K`` builds the level database of the first K blocks only (the same session and
``LevelDatabase.build`` the CLI runs, on the model cut to its first K blocks, with the full model's
low-memory setting and a cache directory of its own). Every block has the same shapes, so the
working set of blocks 0..K-1 is that of the whole build, and it finishes in minutes rather than
hours on a shared CPU. What such a run cannot show is the rest of the model's pages resident, so
besides ``VmHWM`` each phase records the peak of its resident set outside the model file's
mapping (``VmRSS`` less the ``Rss`` of ``model.safetensors`` in ``/proc/<pid>/smaps``) and the
peak ``RssAnon``; ``model_bytes`` plus the first is the bound on a whole build's peak with every
weight page resident (``bound_all_weights_resident_bytes``).

Usage: python -m bench.memory_1b [--phases load leveldb evaluate] [--levels 0] [--calibration-tokens 512]
       [--max-blocks K]
Results: bench/results/memory/memory_1b.json, or ``--out`` (rewritten as each phase progresses and ends).
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
    return _status_kib(pid).get("VmHWM", 0)


def _status_kib(pid: int) -> dict[str, int]:
    """The kB fields of ``/proc/<pid>/status`` (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(rest.split()[0]) for key, _, rest in (line.partition(":") for line in lines)
            if rest.strip().endswith("kB")}


def _mapped_rss_kib(pid: int, file: Path) -> int | None:
    """Resident kB of the process's mappings of ``file`` (None once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    total, inside, target = 0, False, str(file)
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and not head.endswith(":"):  # a mapping's header: "start-end perms offset dev inode path"
            inside = line.rstrip().endswith(target)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def run_phase(name: str, argv: list[str], env: dict[str, str], results: dict[str, Any], logs: Path,
              model_file: Path) -> None:
    """Run ``argv``; record its peak RSS (sampled as it runs, and ru_maxrss at its end) into ``results``."""
    row: dict[str, Any] = {"command": " ".join(argv), "status": "running"}
    results["phases"][name] = row
    started = time.perf_counter()
    out, err = logs / f"{name}.stdout", logs / f"{name}.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, text=True)
    peak = [0]
    anon, outside = [0], [0]  # peak RssAnon; peak VmRSS outside the model file's mapping
    done = threading.Event()

    trace = (logs / f"{name}-rss.csv").open("w")  # the whole course, to find what the peak was
    trace.write("unix_time,vm_rss_kib,rss_anon_kib,rss_file_kib,model_file_rss_kib\n")

    def sample() -> None:
        last_write = 0.0
        while not done.is_set():
            status = _status_kib(proc.pid)
            model_rss = _mapped_rss_kib(proc.pid, model_file)
            trace.write(f"{time.time():.1f},{status.get('VmRSS', 0)},{status.get('RssAnon', 0)},"
                        f"{status.get('RssFile', 0)},{model_rss or 0}\n")
            peak[0] = max(peak[0], status.get("VmHWM", 0))
            anon[0] = max(anon[0], status.get("RssAnon", 0))
            if model_rss is not None and "VmRSS" in status:
                outside[0] = max(outside[0], status["VmRSS"] - model_rss)
            if time.perf_counter() - last_write > 30:  # a killed run still leaves its peak so far
                row.update(hwm_rss_bytes=peak[0] * 1024, seconds=round(time.perf_counter() - started, 1),
                           **_sampled(anon[0], outside[0], results["model_bytes"]))
                _write(results)
                last_write = time.perf_counter()
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # we reap it ourselves: its own rusage, not all children's
    done.set()
    sampler.join()
    trace.close()
    code = os.waitstatus_to_exitcode(status)
    row.update(returncode=code, seconds=round(time.perf_counter() - started, 1), ru_maxrss_bytes=usage.ru_maxrss * 1024,
               hwm_rss_bytes=peak[0] * 1024, status="done" if code == 0 else "failed",
               **_sampled(anon[0], outside[0], results["model_bytes"]))
    text = out.read_text()
    try:
        row["output"] = json.loads(text)
    except json.JSONDecodeError:
        row["stdout_tail"] = text[-2000:]
    row["stderr_tail"] = err.read_text()[-1500:]
    _write(results)


def _sampled(anon_kib: int, outside_kib: int, model_bytes: int) -> dict[str, Any]:
    """The sampled peaks, and the bound on the peak with every weight page resident (model + the rest)."""
    bound = model_bytes + outside_kib * 1024
    return {"rss_anon_max_bytes": anon_kib * 1024, "rss_outside_model_file_max_bytes": outside_kib * 1024,
            "bound_all_weights_resident_bytes": bound,
            "bound_all_weights_resident_over_model_bytes": round(bound / model_bytes, 3)}


def _write(results: dict[str, Any]) -> None:
    """Write ``results``, keeping the phases another run (e.g. one in parallel) recorded in the file."""
    out = Path(results["out"])
    if out.is_file():
        try:
            others = json.loads(out.read_text()).get("phases", {})
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in results.items() if k not in ("own", "out")}, indent=2))
    tmp.replace(out)  # whole files only: a run in parallel reads it too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the model-making child
    parser.add_argument("--phases", nargs="+", default=["load", "leveldb", "evaluate"],
                        choices=["load", "leveldb", "evaluate"])
    parser.add_argument("--levels", type=int, default=0, help="sparsegpt levels either side of keep 0.5")
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=512, help="evaluation tokens")
    parser.add_argument("--max-blocks", type=int, default=None,
                        help="leveldb: build the first K blocks only (same shapes: the same working set)")
    parser.add_argument("--cache", type=Path, default=None, help="cache directory (default: <work>/cache)")
    parser.add_argument("--out", type=Path, default=OUT, help="results file (phases of other runs kept)")
    parser.add_argument("--leveldb-child", action="store_true", help=argparse.SUPPRESS)  # the --max-blocks build
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slimscout-memory-1b",
                        help="model and cache directory (kept between runs)")
    args = parser.parse_args()
    model_dir, cache = args.work / "model", args.cache or args.work / "cache"
    config = args.work / "magnitude-50.json"
    if args.leveldb_child:
        print(json.dumps(build_first_blocks(model_dir, cache, args.max_blocks, args.levels, args.calibration_tokens)))
        return
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
        "out": str(args.out),
    }
    env = {**os.environ, "SLIMSCOUT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "slimscout.cli"]
    model_opts = ["--model", str(model_dir), "--dtype", "bfloat16"]
    phases = {
        "load": [sys.executable, "-c", f"from compress.catalog import load_model; "
                                       f"load_model({str(model_dir)!r}, dtype='bfloat16')"],
        "leveldb": [*cli, "leveldb", *model_opts, "--operator", "sparsegpt", "--keep", "0.5",
                    "--levels", str(args.levels), "--calibration-tokens", str(args.calibration_tokens), "--json"]
        if args.max_blocks is None else
        [sys.executable, "-m", "bench.memory_1b", "--leveldb-child", "--work", str(args.work), "--cache", str(cache),
         "--max-blocks",
         str(args.max_blocks), "--levels", str(args.levels), "--calibration-tokens", str(args.calibration_tokens)],
        "evaluate": [*cli, "evaluate", *model_opts, "--config", str(config), "--split", "holdout",
                     "--tokens", str(args.tokens), "--json"],
    }
    if args.max_blocks is not None:
        results["max_blocks"] = args.max_blocks
    for name in args.phases:
        run_phase(name, phases[name], env, results, args.work, (model_dir / "model.safetensors").resolve())


def build_first_blocks(model_dir: Path, cache: Path, blocks: int, levels: int, tokens: int) -> dict[str, Any]:
    """``slimscout leveldb --operator sparsegpt --keep 0.5`` on the first ``blocks`` blocks of the model.

    The model is loaded whole (memory-mapped) and cut to its first blocks, so calibration and the
    build run those only; the session is told the whole model's low-memory setting (the cut model's
    linear bytes would fall under the threshold). The cache directory is one of its own: the cut
    model has the whole model's fingerprint, and its Grams must never pass for the whole model's.
    """
    import time as clock

    from torch import nn

    from common.settings import get_settings
    from compress.catalog import load_model
    from compress.heap import fix_mmap_threshold
    from compress.leveldb import KeepGrid, LevelDatabase
    from compress.session import ModelSession

    fix_mmap_threshold()  # as the leveldb command does
    loaded = load_model(str(model_dir), dtype="bfloat16")
    model: Any = loaded.model
    stack: nn.ModuleList = model.model.layers
    whole_linear = sum(int(m.weight.nbytes) for m in stack.modules() if isinstance(m, nn.Linear))
    model.model.layers = stack[:blocks]
    model.config.num_hidden_layers = blocks
    low_memory = whole_linear > get_settings().in_memory_caches_max_bytes
    session = ModelSession(loaded, cache_dir=cache / f"first-{blocks}-blocks", calibration_tokens=tokens,
                           low_memory=low_memory)
    start = clock.perf_counter()

    def note(step: str, done: int, total: int) -> None:  # on stderr, to line up with the RSS trace
        print(f"{clock.time():.1f} {step} {done}/{total}", file=sys.stderr, flush=True)

    with session.reporting(note):
        db = LevelDatabase.build(session, "sparsegpt", KeepGrid(keep=0.5, levels=levels),
                                 progress=lambda done, total, layer: note(layer, done, total))
    return {"directory": str(db.directory), "blocks": blocks, "layers": len(session.layers),
            "layers_built": len(db.built_layers), "low_memory": low_memory, "disk_bytes": db.disk_bytes(),
            "seconds": clock.perf_counter() - start}


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
