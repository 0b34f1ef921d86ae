"""Deployable exports of smollm2-135m: does the written directory load with plain transformers and
compute what ``slimscout evaluate --config`` measured, and how big is it on disk?

    python -m bench.export_formats            # → bench/results/export/export-formats.json

For each config: holdout perplexity of the config applied in the session (what ``evaluate --config``
measures), holdout perplexity of the exported directory loaded with ``AutoModelForCausalLM
.from_pretrained`` (transformers + compressed-tensors, no slimscout code in the load), both with the
same evaluator and tokens; the bytes the file spends on the compressible linear layers against
their float32 size; and, for a sharded bfloat16 export, whether it reloads bit-identically.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

RESULTS = Path(__file__).resolve().parent / "results" / "export"
MODEL = "smollm2-135m"
TOKENS = 4096
GROUP = 64  # divides smollm2's 576 and 1536 inputs (128 does not divide 576)


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


def main() -> None:
    from transformers import AutoModelForCausalLM

    from compress.config import CompressionConfig, LayerConfig, QuantSpec, SparsitySpec
    from compress.export import export_compressed, load_compressed
    from compress.session import ModelSession

    session = ModelSession.open(MODEL)
    names = [layer.name for layer in session.layers]
    evaluator = session.evaluator(split="holdout", tokens=TOKENS)
    dense_ppl = evaluator.dense_metrics().ppl
    configs = {
        "int4-g64": CompressionConfig(MODEL, {n: LayerConfig(quant=QuantSpec(4, GROUP)) for n in names}),
        # int8 for the attention value/output and MLP down projections, int4 for the rest
        "mixed-4-8-g64": CompressionConfig(MODEL, {
            layer.name: LayerConfig(quant=QuantSpec(8 if layer.type in ("v", "o", "down") else 4, GROUP))
            for layer in session.layers}),
        "wanda-50": CompressionConfig(MODEL, {n: LayerConfig(sparsity=SparsitySpec(0.5, "wanda")) for n in names}),
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=RESULTS.parent) as tmp:
        for label, config in configs.items():
            session.warm(config)
            with session.applied(config):
                config_ppl = evaluator.evaluate().ppl
            out = Path(tmp) / label
            started = time.perf_counter()
            result = export_compressed(session, config, out, export_format="compressed-tensors")
            export_s = time.perf_counter() - started
            model = AutoModelForCausalLM.from_pretrained(out).eval()
            export_ppl = evaluator.evaluate(model).ppl
            del model
            linear_bytes = _linear_file_bytes(out, names)
            assert config_ppl is not None and export_ppl is not None
            rows.append({
                "config": label, "format": "compressed-tensors", "config_ppl": config_ppl, "export_ppl": export_ppl,
                "relative_difference": abs(export_ppl - config_ppl) / config_ppl,
                "linear_file_bytes": linear_bytes, "linear_float32_bytes": 4 * session.params_linear,
                "linear_ratio_to_float32": linear_bytes / (4 * session.params_linear),
                "file_bytes": result.file_bytes, "export_s": export_s,
            })
            print(json.dumps(rows[-1]), flush=True)

        config = configs["wanda-50"]
        out = Path(tmp) / "bf16-sharded"
        export_compressed(session, config, out, dtype=torch.bfloat16, max_shard_size="100MB")
        with session.applied(config):
            written = {k: v.to(torch.bfloat16) for k, v in session.model.state_dict().items()}
        reloaded = load_compressed(out, dtype=torch.bfloat16).state_dict()
        identical = all(torch.equal(reloaded[k], v) for k, v in written.items() if k in reloaded)
        shards = sorted(p.name for p in out.glob("model-*.safetensors"))
        rows.append({"config": "wanda-50", "format": "slimscout", "dtype": "bfloat16", "shards": shards,
                     "bit_identical_reload": identical, "keys_compared": sum(k in reloaded for k in written),
                     "file_bytes": sum((out / s).stat().st_size for s in shards)})
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"model": MODEL, "holdout_tokens": TOKENS, "dense_ppl": dense_ppl, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "load_average": os.getloadavg()}}
    (RESULTS / "export-formats.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
