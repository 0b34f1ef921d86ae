"""Quality measurement against the dense model: perplexity and KL for causal LMs, cosine for encoders.

Evaluating N tokens costs N tokens of forward passes. The dense model's reference (its NLL and,
per position, its top-k log-probabilities; for encoders its embeddings) is computed once per
(model, tokens) and cached on disk, so a compressed model costs one pass, not two.

KL is KL(dense || compressed) over the dense model's top ``kl_topk`` tokens plus one bucket for
the rest of the vocabulary. Grouping the tail can only lower KL (log-sum inequality), so this is a
lower bound of the full KL; with k=256 the tail bucket holds well under 1% of the mass.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from compress.catalog import LoadedModel
from compress.device import model_device

DEFAULT_SEQ_LEN = 512
ENCODER_SEQ_LEN = 128
DEFAULT_KL_TOPK = 256


@dataclass(frozen=True)
class Metrics:
    n_tokens: int
    seconds: float
    ppl: float | None = None
    nll: float | None = None
    kl: float | None = None
    cosine: float | None = None

    def score(self, objective: str) -> float:
        """The number a search minimizes: ``ppl``, ``kl``, or 1 - cosine for encoders."""
        value = {"ppl": self.ppl, "kl": self.kl, "cosine": None if self.cosine is None else 1 - self.cosine}[objective]
        if value is None:
            raise ValueError(f"objective {objective!r} is not measured for this model")
        return value


@dataclass
class _Reference:
    nll: torch.Tensor  # per chunk: summed NLL (causal) — float64
    count: torch.Tensor  # per chunk: predicted tokens (causal) or sequences (encoder)
    topk_index: list[torch.Tensor]  # causal: per chunk [T, k] int32
    topk_logp: list[torch.Tensor]  # causal: per chunk [T, k] float32
    embeddings: list[torch.Tensor]  # encoder: per chunk [B, H] unit vectors


def _chunks(tokens: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    return [tokens[i : i + seq_len] for i in range(0, tokens.numel(), seq_len) if tokens[i : i + seq_len].numel() >= 2]


class Evaluator:
    """Measures a model (as it is right now) on fixed tokens against the dense reference."""

    def __init__(
        self,
        loaded: LoadedModel,
        tokens: torch.Tensor,
        *,
        seq_len: int | None = None,
        kl_topk: int = DEFAULT_KL_TOPK,
        cache_dir: Path | None = None,
    ) -> None:
        self.loaded = loaded
        self.kind = loaded.kind
        self.seq_len = seq_len or (DEFAULT_SEQ_LEN if self.kind == "causal-lm" else ENCODER_SEQ_LEN)
        self.kl_topk = kl_topk
        self.tokens = tokens
        self.chunks = _chunks(tokens, self.seq_len if self.kind == "causal-lm" else self.seq_len - 2)
        self.n_tokens = int(tokens.numel())
        self.cache_dir = cache_dir
        self._reference: _Reference | None = None
        self.reference_seconds = 0.0

    # -- reference ---------------------------------------------------------------------------
    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(self.tokens.cpu().numpy().tobytes()).hexdigest()[:16]
        name = f"ref-{self.loaded.fingerprint}-{digest}-{self.seq_len}-{self.kl_topk}.safetensors"
        return self.cache_dir / "reference" / name

    def reference(self) -> _Reference:
        """The dense model's outputs; the model must be dense when this first runs (or the cache hit)."""
        if self._reference is not None:
            return self._reference
        path = self._cache_path()
        if path is not None and path.is_file():
            self._reference = self._load_reference(path)
            return self._reference
        start = time.perf_counter()
        ref = _Reference(torch.zeros(len(self.chunks), dtype=torch.float64), torch.zeros(len(self.chunks)), [], [], [])
        for i, chunk in enumerate(self.chunks):
            if self.kind == "causal-lm":
                logp = self._causal_logp(self.loaded.model, chunk)
                target = chunk[1:].to(logp.device)
                ref.nll[i] = -logp.gather(1, target[:, None]).sum().double().cpu()
                ref.count[i] = target.numel()
                k = min(self.kl_topk, logp.shape[-1])
                values, index = logp.topk(k, dim=-1)
                ref.topk_logp.append(values.float().cpu())
                ref.topk_index.append(index.int().cpu())
                del logp, values, index
            else:
                ref.embeddings.append(self._embed(self.loaded.model, chunk))
                ref.count[i] = 1
        self.reference_seconds = time.perf_counter() - start
        self._reference = ref
        if path is not None:
            self._save_reference(path, ref)
        return ref

    def _save_reference(self, path: Path, ref: _Reference) -> None:
        tensors = {"nll": ref.nll, "count": ref.count}
        for i, (index, logp) in enumerate(zip(ref.topk_index, ref.topk_logp, strict=True)):
            tensors[f"index.{i}"], tensors[f"logp.{i}"] = index.contiguous(), logp.contiguous()
        for i, emb in enumerate(ref.embeddings):
            tensors[f"emb.{i}"] = emb.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(self)}")
        save_file(tensors, str(tmp))
        tmp.replace(path)

    def _load_reference(self, path: Path) -> _Reference:
        data = load_file(str(path))
        n = data["nll"].numel()
        causal = self.kind == "causal-lm"
        return _Reference(
            data["nll"],
            data["count"],
            [data[f"index.{i}"] for i in range(n)] if causal else [],
            [data[f"logp.{i}"] for i in range(n)] if causal else [],
            [] if causal else [data[f"emb.{i}"] for i in range(n)],
        )

    # -- forward passes ----------------------------------------------------------------------
    @staticmethod
    @torch.inference_mode()
    def _causal_logp(model: nn.Module, chunk: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=chunk[None, :-1].to(model_device(model))).logits[0].float()
        # log-softmax in place: with a 128k vocabulary each [T, V] float32 copy is ~0.25 GB per 512 tokens
        return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))

    def _embed(self, model: nn.Module, chunk: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, unit-norm embedding of each window of the chunk (one window per chunk)."""
        tok = self.loaded.tokenizer
        ids = torch.cat([torch.tensor([tok.cls_token_id]), chunk.cpu(), torch.tensor([tok.sep_token_id])])[None]
        ids = ids.to(model_device(model))
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return F.normalize(hidden.mean(dim=1).float(), dim=-1).cpu()

    # -- measurement -------------------------------------------------------------------------
    def stream(self, model: nn.Module | None = None) -> Iterator[Metrics]:
        """Yield running metrics after each chunk (for multi-fidelity pruning); the last is final."""
        model = model or self.loaded.model
        ref = self.reference()
        start = time.perf_counter()
        nll = kl = cos = 0.0
        count = 0
        for i, chunk in enumerate(self.chunks):
            if self.kind == "causal-lm":
                logq = self._causal_logp(model, chunk)
                target = chunk[1:].to(logq.device)
                nll += float(-logq.gather(1, target[:, None]).sum())
                ref_logp, ref_index = ref.topk_logp[i].to(logq.device), ref.topk_index[i].to(logq.device).long()
                kl += float(_bucketed_kl(ref_logp, ref_index, logq).sum())
                del logq
                count += target.numel()
                yield Metrics(
                    count, time.perf_counter() - start, ppl=math.exp(nll / count), nll=nll / count, kl=kl / count
                )
            else:
                emb = self._embed(model, chunk)
                cos += float((emb * ref.embeddings[i]).sum(-1).mean())
                count += 1
                yield Metrics(count * chunk.numel(), time.perf_counter() - start, cosine=cos / count)

    def evaluate(self, model: nn.Module | None = None) -> Metrics:
        *_, last = self.stream(model)  # an Evaluator always has at least one chunk
        return last

    def dense_metrics(self) -> Metrics:
        """The dense model's metrics from the reference itself (no second pass)."""
        ref = self.reference()
        if self.kind == "causal-lm":
            nll = float(ref.nll.sum() / ref.count.sum())
            return Metrics(int(ref.count.sum()), self.reference_seconds, ppl=math.exp(nll), nll=nll, kl=0.0)
        return Metrics(self.n_tokens, self.reference_seconds, cosine=1.0)


def _bucketed_kl(ref_logp: torch.Tensor, ref_index: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-position KL(p || q) over p's top-k tokens plus one tail bucket."""
    q_top = logq.gather(1, ref_index)
    p = ref_logp.exp()
    head = (p * (ref_logp - q_top)).sum(-1)
    p_tail = (1 - p.sum(-1)).clamp_min(0)
    q_tail = (1 - q_top.exp().sum(-1)).clamp_min(1e-12)
    tail = torch.where(
        p_tail > 1e-12, p_tail * (p_tail.clamp_min(1e-12).log() - q_tail.log()), torch.zeros_like(p_tail)
    )
    return head + tail
