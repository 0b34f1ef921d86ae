"""The peer: vllm-project's llm-compressor prunes smollm2-135m (SparseGPT or Wanda, unstructured).

Runs in its own virtual environment (llm-compressor pins its own transformers) and never imports
slimscout. Its inputs come from ``bench/peer_calibration.py`` (run by slimscout): the safetensors
directory slimscout converted the model into, and slimscout's exact calibration token ids, so both
tools calibrate on identical tokens.

Usage: peer_llmcompressor.py CALIB.json METHOD SPARSITY OUT_DIR  (METHOD: sparsegpt | wanda)

The recipe names the decoder projections explicitly: with ``targets=["Linear"], ignore=["lm_head"]``
llm-compressor 0.14 still prunes ``lm_head`` (its ignore list is matched against ``"lm_head."``),
and SmolLM2 ties ``lm_head`` to the embedding table. After pruning this script checks that every
tensor other than the projections is bit-identical to the dense model and measures each
projection's sparsity. The weights are written with the dense file's own key set (plain float32
safetensors, no compressed-tensors metadata in config.json) so slimscout's loader reads them as
any dense model. A ``peer.json`` in OUT_DIR records versions, wall time and the checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

TARGETS = [r"re:.*self_attn\.(q|k|v|o)_proj$", r"re:.*mlp\.(gate|up|down)_proj$"]
PROJECTION = re.compile(r".*\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")
MODIFIERS: dict[str, Any] = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}
WEIGHTS = "model.safetensors"


def calibration_dataset(calib: dict[str, Any]) -> Dataset:
    sequences = calib["sequences"]
    return Dataset.from_dict({"input_ids": sequences, "attention_mask": [[1] * len(s) for s in sequences]})


def check_and_measure(dense: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-projection sparsity; every other tensor must equal the dense model's bit for bit."""
    if set(dense) != set(pruned):
        raise RuntimeError(f"key sets differ: {sorted(set(dense) ^ set(pruned))[:5]}")
    per_layer: dict[str, float] = {}
    changed_other: list[str] = []
    zeros = total = 0
    for name, tensor in dense.items():
        after = pruned[name]
        if PROJECTION.match(name):
            z = int((after == 0).sum())
            per_layer[name.removesuffix(".weight")] = z / after.numel()
            zeros += z
            total += after.numel()
        elif not torch.equal(tensor, after):
            changed_other.append(name)
    if not per_layer:
        raise RuntimeError("no decoder projection found in the weights")
    return {
        "projections": len(per_layer),
        "sparsity_overall": zeros / total,
        "sparsity_min": min(per_layer.values()),
        "sparsity_max": max(per_layer.values()),
        "per_layer": per_layer,
        "non_projection_tensors_changed": changed_other,
    }


def main(calib_path: Path, method: str, sparsity: float, out: Path) -> None:
    calib = json.loads(calib_path.read_text())
    model_dir = Path(calib["model_dir"])
    dense = load_file(model_dir / WEIGHTS)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    recipe = MODIFIERS[method](sparsity=sparsity, mask_structure="0:0", targets=TARGETS)
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=calibration_dataset(calib),
        recipe=recipe,
        num_calibration_samples=len(calib["sequences"]),
        max_seq_length=calib["seq_len"],
        shuffle_calibration_samples=False,
    )
    wall = time.perf_counter() - start
    state = model.state_dict()
    pruned = {name: state[name].detach().to(torch.float32).contiguous().clone() for name in dense}
    checks = check_and_measure(dense, pruned)
    lm_head = getattr(model, "lm_head", None)
    tied = lm_head is not None and lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    embed_name = next(n for n in dense if n.endswith("embed_tokens.weight"))
    checks["lm_head_tied_to_embeddings"] = bool(tied)
    checks["lm_head_equals_dense_embeddings"] = bool(
        lm_head is not None and torch.equal(lm_head.weight.detach().float(), dense[embed_name])
    )
    problems = []
    if checks["non_projection_tensors_changed"]:
        problems.append(f"tensors other than the projections changed: {checks['non_projection_tensors_changed']}")
    if not checks["lm_head_equals_dense_embeddings"]:
        problems.append("lm_head differs from the dense embedding table")
    if abs(checks["sparsity_min"] - sparsity) > 0.005 or abs(checks["sparsity_max"] - sparsity) > 0.005:
        problems.append(f"projection sparsity {checks['sparsity_min']:.4f}..{checks['sparsity_max']:.4f} != {sparsity}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name != WEIGHTS and item.is_file():
            shutil.copy2(item, out / item.name)
    save_file(pruned, out / WEIGHTS, metadata={"format": "pt"})
    record = {
        "peer": "llm-compressor",
        "method": method,
        "sparsity": sparsity,
        "keep": round(1 - sparsity, 6),
        "recipe": {
            "modifier": type(recipe).__name__,
            "targets": TARGETS,
            "mask_structure": "0:0",
            "pipeline": "oneshot default",
        },
        "calibration": {k: calib.get(k) for k in ("dataset", "split", "mode", "tokens", "seq_len", "sha256")}
        | {"sequences": len(calib["sequences"]), "split_documents": calib["documents"]},
        "versions": {p: version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")},
        "torch_threads": torch.get_num_threads(),
        "oneshot_wall_s": round(wall, 2),
        "load_average": os.getloadavg(),
        "checks": checks,
        "problems": problems,
    }
    (out / "peer.json").write_text(json.dumps(record, indent=2))
    print(
        json.dumps(
            {k: v for k, v in record.items() if k != "checks"}
            | {
                "sparsity_overall": checks["sparsity_overall"],
                "sparsity_min": checks["sparsity_min"],
                "sparsity_max": checks["sparsity_max"],
            }
        )
    )
    if problems:
        raise SystemExit("checks failed: " + "; ".join(problems))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[2] not in MODIFIERS:
        raise SystemExit("usage: peer_llmcompressor.py CALIB.json {sparsegpt|wanda} SPARSITY OUT_DIR")
    main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), Path(sys.argv[4]))
