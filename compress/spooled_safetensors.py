"""Safetensors files written from the tensors' own memory: one tensor at a time, or all without a copy.

``safetensors.torch.save_file`` takes every tensor of the file together; a level database layer
file holds one weight per level (17 float32 copies of a 1B Llama's down_proj, 1.1 GB, at the
default grid). Here each tensor's bytes go to a spool file as soon as it is added, and ``close``
writes the header and copies the spooled bytes after it, largest element size first (as
``save_file`` orders them, so every tensor starts at a multiple of its element size). The result
is an ordinary safetensors file: ``safe_open`` and ``load_file`` read it.

``save_file`` also copies every tensor into a ``bytes`` object before writing (a calibration
block's Grams: 0.3 GB more at a 1B Llama's shapes); ``write_tensors`` writes them from their own
memory instead.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np
import torch
from torch import Tensor

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_COPY_CHUNK = 1 << 24


class SpooledSafetensors:
    """``with SpooledSafetensors(path, metadata) as out: out.add(name, tensor)``; written on a clean exit."""

    def __init__(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        # open for the writer's lifetime; closed (and so deleted) by close() or __exit__
        self._spool = tempfile.TemporaryFile(dir=self.path.parent, prefix=f".{self.path.name}.spool")  # noqa: SIM115
        self._entries: dict[str, tuple[str, list[int], int, int, int]] = {}  # name -> dtype, shape, start, bytes, size

    def add(self, name: str, tensor: Tensor) -> None:
        """Spool ``tensor`` (a CPU tensor of a dtype safetensors knows); the caller may drop it at once."""
        if name in self._entries or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is taken")
        data = _bytes_of(tensor)
        start = self._spool.tell()
        self._spool.write(data.data)
        self._entries[name] = (_DTYPES[tensor.dtype], list(tensor.shape), start, data.nbytes, tensor.element_size())

    def close(self) -> None:
        """Write the file: header, then the spooled bytes in safetensors' order."""
        entries = {name: (dtype, shape, nbytes, size)
                   for name, (dtype, shape, _, nbytes, size) in self._entries.items()}
        order = _order(entries)
        with self.path.open("wb") as out:
            out.write(_header(entries, order, self.metadata))
            for name in order:
                _, _, start, nbytes, _ = self._entries[name]
                self._spool.seek(start)
                _copy(self._spool, out, nbytes)
        self._spool.close()

    def __enter__(self) -> SpooledSafetensors:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._spool.close()


def write_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """``save_file(tensors, path, metadata)``, writing each tensor from its own memory (no copy of it)."""
    views = {}
    entries = {}
    for name, tensor in tensors.items():
        data = views[name] = _bytes_of(tensor)
        entries[name] = (_DTYPES[tensor.dtype], list(tensor.shape), data.nbytes, tensor.element_size())
    order = _order(entries)
    with Path(path).open("wb") as out:
        out.write(_header(entries, order, dict(metadata or {})))
        for name in order:
            out.write(views[name].data)


def _bytes_of(tensor: Tensor) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array (its own memory when it is a contiguous CPU tensor)."""
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"safetensors has no dtype for {tensor.dtype}")
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _order(entries: dict[str, tuple[str, list[int], int, int]]) -> list[str]:
    """Largest element size first: every tensor then starts at a multiple of its element size."""
    return sorted(entries, key=lambda name: (-entries[name][3], name))


def _header(entries: dict[str, tuple[str, list[int], int, int]], order: list[str], metadata: dict[str, str]) -> bytes:
    """The length-prefixed JSON header for ``entries`` (dtype, shape, bytes, element size) laid out in ``order``."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        dtype, shape, nbytes, _ = entries[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _copy(source: IO[bytes], target: IO[bytes], nbytes: int) -> None:
    remaining = nbytes
    while remaining:
        chunk = source.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise OSError("the spool file ended early")
        target.write(chunk)
        remaining -= len(chunk)
