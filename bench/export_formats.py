"""Deployable exports of smollm2-135m: does the written directory load with plain transformers and
compute what ``slimscout evaluate --config`` measured, and how big is it on disk?

    OMP_NUM_THREADS=1 python -m bench.export_formats [--rows NAME ...]   # → bench/results/export/export-formats.json

For each config: holdout perplexity of the config applied in the session (what ``evaluate --config``
measures), holdout perplexity of the exported directory loaded with ``AutoModelForCausalLM
.from_pretrained`` (transformers + compressed-tensors, no slimscout code in the load), both with the
same evaluator and tokens; whether every linear weight of the loaded model equals the applied one
bit for bit; the bytes the file spends on the compressible linear layers against their float32
size; and, for a sharded bfloat16 export, whether it reloads bit-identically.

Rows (``ROWS``; ``--rows`` runs only those named and replaces just their entries in the results file):

- ``int4-g64``, ``mixed-4-8-g64``: RTN, every layer int4 / int8 for v, o and down projections.
- ``wanda-50``: unstructured 50% (stored as explicit zeros).
- ``gptq-int4-g64``: GPTQ, every layer 4 bits, group 64.
- ``gptq-3.5-bits``: ``slimscout baseline --method uniform --operator gptq --budget-bits 3.5``
  (3 and 4 bits, groups 64 and 128 per layer).
- ``gptq-3-4-8-handmade``: ``bench/results/bits/handmade-gptq-3-4-8-4.5.config.json`` (GPTQ at
  3, 4 and 8 bits, group 64; see ``bench.bits``).
- ``bf16-sharded``: the Wanda 50% config as a sharded bfloat16 slimscout export.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

if TYPE_CHECKING:
    from compress.config import CompressionConfig
    from compress.measure import Evaluator
    from compress.session import ModelSession

RESULTS = Path(__file__).resolve().parent / "results" / "export"
MODEL = "smollm2-135m"
TOKENS = 4096
GROUP = 64  # divides smollm2's 576 and 1536 inputs (128 does not divide 576)
HANDMADE = Path(__file__).resolve().parent / "results" / "bits" / "handmade-gptq-3-4-8-4.5.config.json"


def _linear_file_bytes(directory: Path, layer_names: list[str]) -> int:
    """Bytes of the tensors that belong to the compressible linear layers, over every shard."""
    from compress.weight_files import weight_files

    prefixes = tuple(f"{name}." for name in layer_names)
    total = 0
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118
                if key.startswith(prefixes):
                    tensor = fh.get_tensor(key)
                    total += tensor.numel() * tensor.element_size()
    return total


def _uniform(session: ModelSession, **spec: Any) -> CompressionConfig:
    from compress.config import CompressionConfig, LayerConfig

    return CompressionConfig(MODEL, {layer.name: LayerConfig(**spec) for layer in session.layers})


def _rtn_mixed(session: ModelSession) -> CompressionConfig:
    """int8 for the attention value/output and MLP down projections, int4 for the rest."""
    from compress.config import CompressionConfig, LayerConfig, QuantSpec

    return CompressionConfig(MODEL, {
        layer.name: LayerConfig(quant=QuantSpec(8 if layer.type in ("v", "o", "down") else 4, GROUP))
        for layer in session.layers})


def _gptq_bits_budget(session: ModelSession) -> CompressionConfig:
    from compress.baselines import build_baseline
    from compress.registry import DENSE_BITS

    return build_baseline("uniform", session, 3.5 / DENSE_BITS, ["gptq"]).config


def _handmade(session: ModelSession) -> CompressionConfig:
    from compress.config import load_config

    return load_config(HANDMADE)


def _configs() -> dict[str, Callable[[ModelSession], CompressionConfig]]:
    from compress.config import QuantSpec, SparsitySpec

    return {
        "int4-g64": lambda s: _uniform(s, quant=QuantSpec(4, GROUP)),
        "mixed-4-8-g64": _rtn_mixed,
        "wanda-50": lambda s: _uniform(s, sparsity=SparsitySpec(0.5, "wanda")),
        "gptq-int4-g64": lambda s: _uniform(s, quant=QuantSpec(4, GROUP, method="gptq")),
        "gptq-3.5-bits": _gptq_bits_budget,
        "gptq-3-4-8-handmade": _handmade,
    }


ROWS = ("int4-g64", "mixed-4-8-g64", "wanda-50", "gptq-int4-g64", "gptq-3.5-bits", "gptq-3-4-8-handmade",
        "bf16-sharded")


def _bit_mix(config: CompressionConfig) -> dict[str, int]:
    """Layers per stored setting, e.g. {"gptq-4/g64": 180, "gptq-3/g64": 30}."""
    mix = collections.Counter(f"{c.quant.method}-{c.quant.bits}/g{c.quant.group_size}" if c.quant is not None
                              else "not quantised" for c in config.layers.values())
    return dict(sorted(mix.items()))


def _compressed_tensors_row(session: ModelSession, evaluator: Evaluator, label: str, config: CompressionConfig,
                            out: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from compress.export import export_compressed

    names = [layer.name for layer in session.layers]
    session.warm(config)
    with session.applied(config):
        config_ppl = evaluator.evaluate().ppl
        applied = {name: session.modules[name].weight.detach().clone() for name in names}
    started = time.perf_counter()
    result = export_compressed(session, config, out, export_format="compressed-tensors")
    export_s = time.perf_counter() - started
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    export_ppl = evaluator.evaluate(model).ppl  # its first forward decompresses the packed layers
    identical = all(torch.equal(model.get_submodule(name).weight, applied[name]) for name in names)
    del model
    linear_bytes = _linear_file_bytes(out, names)
    quant = json.loads((out / "config.json").read_text()).get("quantization_config", {})
    assert config_ppl is not None and export_ppl is not None
    return {
        "config": label, "format": "compressed-tensors", "bit_mix": _bit_mix(config),
        "config_groups": len(quant.get("config_groups", {})),
        "config_ppl": config_ppl, "export_ppl": export_ppl,
        "relative_difference": abs(export_ppl - config_ppl) / config_ppl, "weights_bit_identical": identical,
        "linear_file_bytes": linear_bytes, "linear_float32_bytes": 4 * session.params_linear,
        "linear_ratio_to_float32": linear_bytes / (4 * session.params_linear),
        "bits_per_weight_on_disk": 8 * linear_bytes / session.params_linear,
        "file_bytes": result.file_bytes, "export_s": export_s,
    }


def _sharded_row(session: ModelSession, config: CompressionConfig, out: Path) -> dict[str, Any]:
    from compress.export import export_compressed, load_compressed

    export_compressed(session, config, out, dtype=torch.bfloat16, max_shard_size="100MB")
    with session.applied(config):
        written = {k: v.to(torch.bfloat16) for k, v in session.model.state_dict().items()}
    reloaded = load_compressed(out, dtype=torch.bfloat16).state_dict()
    identical = all(torch.equal(reloaded[k], v) for k, v in written.items() if k in reloaded)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    return {"config": "wanda-50", "format": "slimscout", "dtype": "bfloat16", "shards": shards,
            "bit_identical_reload": identical, "keys_compared": sum(k in reloaded for k in written),
            "file_bytes": sum((out / s).stat().st_size for s in shards)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="rows to measure; the results file keeps the others as they are")
    args = parser.parse_args()

    from compress.session import ModelSession

    session = ModelSession.open(MODEL)
    evaluator = session.evaluator(split="holdout", tokens=TOKENS)
    configs = _configs()
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=RESULTS.parent) as tmp:
        for label in args.rows:
            out = Path(tmp) / label
            if label == "bf16-sharded":
                row = _sharded_row(session, configs["wanda-50"](session), out)
            else:
                row = _compressed_tensors_row(session, evaluator, label, configs[label](session), out)
            row["measured"] = datetime.now(UTC).isoformat(timespec="seconds")
            measured.append(row)
            print(json.dumps(row), flush=True)
    path = RESULTS / "export-formats.json"
    record = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    fresh = {(row["config"], row["format"]) for row in measured}
    dense_ppl = evaluator.dense_metrics().ppl
    record.setdefault("dense_ppl", dense_ppl)  # the first run's; this run's is under "machine"
    record.update({
        "model": MODEL, "holdout_tokens": TOKENS,
        "rows": [row for row in record["rows"] if (row["config"], row["format"]) not in fresh] + measured,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average": os.getloadavg(), "rows": args.rows, "dense_ppl": dense_ppl},
    })
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
