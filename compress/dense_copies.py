"""The dense weights a session restores from, without a second copy of the model where it can't afford one.

A layer's dense weight is the module's own weight until the layer is first overwritten; only then
is it copied: into memory (small models: restoring is then a copy in RAM), or into a file of its
own under a scratch directory (large models: the copy costs disk, not memory, and is read back one
layer at a time). Either way the copy is bit for bit, in the model's dtype.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


class DenseCopies:
    def __init__(self, modules: dict[str, nn.Linear], *, spill_root: Path | None = None) -> None:
        """``spill_root``: keep the copies in files under a fresh directory there (removed with this object)."""
        self.modules = modules
        self._memory: dict[str, torch.Tensor] = {}
        self._spill: Path | None = None
        if spill_root is not None:
            spill_root.mkdir(parents=True, exist_ok=True)
            self._spill = Path(tempfile.mkdtemp(prefix="dense-", dir=spill_root))
            weakref.finalize(self, shutil.rmtree, self._spill, True)
        self._spilled: set[str] = set()

    @property
    def in_memory(self) -> bool:
        return self._spill is None

    def keep(self, name: str) -> None:
        """Call before layer ``name``'s weight is first overwritten (later calls do nothing)."""
        if name in self._memory or name in self._spilled:
            return
        weight = self.modules[name].weight.detach()
        if self._spill is None:
            self._memory[name] = weight.clone()
            return
        save_file({"weight": weight.contiguous().cpu()}, str(self._spill / f"{name}.safetensors"))
        self._spilled.add(name)

    def get(self, name: str) -> torch.Tensor:
        """Layer ``name``'s dense weight, on the model's device (the module's own if never overwritten)."""
        copy = self._memory.get(name)
        if copy is not None:
            return copy
        weight = self.modules[name].weight
        if name not in self._spilled:
            return weight.detach()
        assert self._spill is not None
        with safe_open(str(self._spill / f"{name}.safetensors"), framework="pt") as fh:
            return fh.get_tensor("weight").to(weight.device)
