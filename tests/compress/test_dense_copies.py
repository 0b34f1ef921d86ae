from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.dense_copies import DenseCopies


def _modules() -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    return {"a": nn.Linear(8, 4, dtype=torch.bfloat16), "b": nn.Linear(8, 4, dtype=torch.bfloat16)}


def test_no_copy_until_a_layer_is_overwritten() -> None:
    modules = _modules()
    copies = DenseCopies(modules)
    assert copies.get("a").data_ptr() == modules["a"].weight.data_ptr()
    copies.keep("a")
    original = modules["a"].weight.detach().clone()
    with torch.no_grad():
        modules["a"].weight.zero_()
    assert torch.equal(copies.get("a"), original)


def test_spilled_copies_are_bit_exact_and_leave_no_files(tmp_path: Path) -> None:
    modules = _modules()
    copies = DenseCopies(modules, spill_root=tmp_path)
    original = modules["b"].weight.detach().clone()
    copies.keep("b")
    copies.keep("b")  # a second call must not overwrite the dense copy with the current weight
    with torch.no_grad():
        modules["b"].weight.fill_(3.0)
    copies.keep("b")
    restored = copies.get("b")
    assert restored.dtype == torch.bfloat16 and torch.equal(restored, original)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    del copies
    assert not list(tmp_path.rglob("*.safetensors"))
