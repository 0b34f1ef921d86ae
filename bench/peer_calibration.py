"""Export slimscout's calibration tokens and model directory for the llm-compressor peer.

Run with slimscout's interpreter (``PYTHONPATH=<tree> .venv/bin/python bench/peer_calibration.py OUT``).
It writes one JSON file: the safetensors directory slimscout converted smollm2-135m into, and the
exact token ids slimscout calibrates on (the first ``DEFAULT_CALIBRATION_TOKENS`` of the lee-news
calibration split), cut into the same 512-token sequences ``collect_stats`` feeds the model. The
peer's script reads this file, so both tools see identical tokens without the peer importing
slimscout.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path

import torch

from compress.calibration import collect_stats
from compress.catalog import _smollm2_dir, load_model
from compress.data import split_documents, token_stream
from compress.session import DEFAULT_CALIBRATION_TOKENS

MODEL_ID = "smollm2-135m"
DATASET = "lee-news"


def calibration_seq_len() -> int:
    """The sequence length ``collect_stats`` cuts calibration tokens into (its default argument)."""
    return int(inspect.signature(collect_stats).parameters["seq_len"].default)


def main(out: Path, mode: str) -> None:
    """``mode`` "slimscout": slimscout's calibration tokens; "documents": every calibration document whole."""
    loaded = load_model(MODEL_ID)
    stream = token_stream(DATASET, "calibration", loaded.tokenizer)
    if mode == "documents":
        docs = split_documents(DATASET, "calibration")
        encoded = loaded.tokenizer(docs, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        sequences = [list(map(int, seq)) for seq in encoded]
        seq_len = max(len(seq) for seq in sequences)
        ids = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
    else:
        ids = stream.ids[: min(DEFAULT_CALIBRATION_TOKENS, stream.ids.numel())]
        seq_len = calibration_seq_len()
        sequences = [
            ids[i : i + seq_len].tolist() for i in range(0, ids.numel(), seq_len) if ids[i : i + seq_len].numel() >= 2
        ]
    document = {
        "model_id": MODEL_ID,
        "model_dir": str(_smollm2_dir()),
        "dataset": DATASET,
        "split": "calibration",
        "mode": mode,
        "documents": len(split_documents(DATASET, "calibration")),
        "split_tokens": int(stream.ids.numel()),
        "tokens": int(ids.numel()),
        "seq_len": seq_len,
        "sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
        "sequences": sequences,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document))
    print(f"{out}: {len(sequences)} sequences x {seq_len} tokens from {document['documents']} documents")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["slimscout"], ["documents"]):
        raise SystemExit("usage: peer_calibration.py OUT.json [slimscout|documents]")
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "slimscout")
