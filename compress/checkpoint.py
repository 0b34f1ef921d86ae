"""The on-disk format of a slimscout export, and loading it back (``load_compressed``).

``compress.export`` writes these directories from a session; this module only reads them, so
that ``compress.catalog`` (which loads any model directory, exports included) does not import the
session through the writer (the cycle catalog → export → session → catalog).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from common.errors import CorruptCheckpointError, ModelNotFoundError
from common.settings import get_settings
from compress.weight_files import load_weights

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MANIFEST_NAME = "slimscout_manifest.json"
CONFIG_NAME = "slimscout_config.json"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_SCHEMA = "slimscout.manifest/v1"
FORMAT_VERSION = 1


class LowRankLinear(nn.Module):
    """``up(down(x))``: a rank-``r`` linear layer stored as two factors, ``down`` [r, in], ``up`` [out, r]."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def set_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    previous: nn.Module = getattr(parent, child)
    setattr(parent, child, module)
    return previous


# -- loading ---------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST_NAME
    if not file.is_file():
        raise ModelNotFoundError(f"{path} is not a slimscout export (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise CorruptCheckpointError(f"{file} is not a {MANIFEST_SCHEMA} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpointError(f"{file} has format_version {manifest.get('format_version')!r}; "
                                     f"this slimscout reads {FORMAT_VERSION}")
    return manifest


@contextmanager
def _skip_init() -> Iterator[None]:
    """Skip random initialization while building the skeleton (every weight is loaded after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialize (slower, same result)
        yield
        return
    with no_init_weights():
        yield


def build_skeleton(model_config: Any, kind: str) -> PreTrainedModel:
    """The architecture ``model_config`` describes, float32, weights uninitialized."""
    from transformers import AutoModel, AutoModelForCausalLM

    loader = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    with _skip_init():
        return loader.from_config(model_config, trust_remote_code=get_settings().trust_remote_code,
                                  dtype=torch.float32)


def _check_keys(model: nn.Module, missing: list[str], unexpected: list[str], file: Path) -> None:
    """Allow missing keys only for weights tied to a loaded one (the LM head tied to the embeddings)."""
    if unexpected:
        raise CorruptCheckpointError(f"checkpoint {file} does not match its manifest: unexpected tensors "
                                     f"{', '.join(sorted(unexpected)[:3])}")
    params = dict(model.named_parameters(remove_duplicate=False))
    missing_set = set(missing)
    loaded = {id(tensor) for name, tensor in params.items() if name not in missing_set}
    untied = [name for name in missing if name not in params or id(params[name]) not in loaded]
    if untied:
        raise CorruptCheckpointError(f"checkpoint {file} does not match its manifest: missing tensors "
                                     f"{', '.join(sorted(untied)[:3])}")


def load_compressed(path: str | Path, *, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A model written by ``slimscout apply``, with LowRankLinear for its factored layers, in eval mode.

    Builds the architecture from config.json (no weights; remote code only if settings allow) and loads
    model.safetensors strictly. Raises ModelNotFoundError / CorruptCheckpointError with one-line messages.
    """
    from transformers import AutoConfig

    path = Path(path).expanduser()
    manifest = read_manifest(path)
    trust = get_settings().trust_remote_code
    if not (path / "config.json").is_file():
        raise CorruptCheckpointError(f"{path} is an export without config.json")
    if manifest.get("format", "slimscout") != "slimscout":  # a standard layout: transformers reads it
        return _load_standard(path, manifest, dtype=dtype)
    model = build_skeleton(AutoConfig.from_pretrained(path, trust_remote_code=trust), manifest.get("kind", ""))
    for name in manifest.get("absent_modules", []):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, None)
    for name, entry in manifest.get("layers", {}).items():
        if entry.get("storage") != "factored":
            continue
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise CorruptCheckpointError(f"{path / MANIFEST_NAME} names layer {name}, which the model "
                                         "built from config.json does not have") from None
        if not isinstance(dense, nn.Linear):
            raise CorruptCheckpointError(f"{path / MANIFEST_NAME}: {name} is not a linear layer")
        set_module(model, name, LowRankLinear(dense.in_features, dense.out_features, int(entry["rank"]),
                                               bias=dense.bias is not None, dtype=dense.weight.dtype))
    state = load_weights(path)
    file = path / WEIGHTS_NAME
    model.tie_weights()  # before loading, so that a tied weight is filled through whichever name was saved
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise CorruptCheckpointError(f"checkpoint {file} does not match its manifest ({first})") from None
    _check_keys(model, list(result.missing_keys), list(result.unexpected_keys), file)
    if dtype is not None:
        nn.Module.to(model, dtype)  # (PreTrainedModel.to is typed for devices only)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_standard(path: Path, manifest: dict[str, Any], *, dtype: torch.dtype | None) -> PreTrainedModel:
    """A compressed-tensors export, through transformers (which needs the compressed-tensors package).

    Packed layers are decompressed by the compressed-tensors library once, right after loading, and
    left as plain Linear layers holding their on-grid weights, as the session and the evaluator
    expect (a deployment runtime such as vLLM keeps them packed instead). transformers' own
    ``dequantize=True`` load path is not used: for 8-bit packed layers it does not reproduce the
    library's decompression (measured here: up to 0.08 off per weight, transformers 5.24).
    """
    from transformers import AutoModel, AutoModelForCausalLM

    loader = AutoModelForCausalLM if manifest.get("kind") == "causal-lm" else AutoModel
    try:
        model = loader.from_pretrained(path, use_safetensors=True, dtype=dtype or torch.float32,
                                       trust_remote_code=get_settings().trust_remote_code)
    except (OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
        raise CorruptCheckpointError(f"checkpoint {path} does not load ({first})") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.compressor.decompress_model(model)
        for module in model.modules():
            if hasattr(module, "quantization_scheme"):
                for name in ("weight_scale", "weight_zero_point", "weight_shape", "weight_global_scale"):
                    if hasattr(module, name):
                        delattr(module, name)
                del module.quantization_scheme
    model.eval()
    model.requires_grad_(False)
    return model
