"""A safetensors file written tensor by tensor reads back like one written by ``save_file``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compress.spooled_safetensors import SpooledSafetensors, write_tensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "0.codes": torch.randint(0, 255, (3, 5), generator=g, dtype=torch.uint8),  # 1-byte items first: the
        "0.scales": torch.randn(3, 2, generator=g).half(),  # writer must reorder for alignment
        "-1.weight": torch.randn(7, 3, generator=g),
        "1.weight": torch.randn(4, 4, generator=g).bfloat16(),
        "mask": torch.rand(2, 3, generator=g) > 0.5,
        "wide": torch.randn(5, generator=g, dtype=torch.float64),
        "index": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


def test_every_tensor_and_the_metadata_read_back(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "layer.safetensors"
    with SpooledSafetensors(path, metadata={"layer": "model.layers.0.mlp.down_proj"}) as out:
        for name, tensor in tensors.items():
            out.add(name, tensor)
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"layer": "model.layers.0.mlp.down_proj"}
        assert torch.equal(fh.get_tensor("1.weight"), tensors["1.weight"])
    reference = tmp_path / "reference.safetensors"
    save_file(tensors, str(reference))
    assert path.stat().st_size - reference.stat().st_size < 64  # the same data; headers may differ in spacing


def test_a_tensor_may_be_dropped_once_added(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    with SpooledSafetensors(path) as out:
        tensor = torch.ones(4, 4)
        out.add("x", tensor)
        tensor.zero_()  # the spooled bytes are a copy
    assert torch.equal(load_file(str(path))["x"], torch.ones(4, 4))


def test_an_error_inside_writes_no_file_and_leaves_no_spool(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    with pytest.raises(RuntimeError), SpooledSafetensors(path) as out:
        out.add("x", torch.ones(2))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_bad_names_and_dtypes_are_refused(tmp_path: Path) -> None:
    with SpooledSafetensors(tmp_path / "a.safetensors") as out:
        out.add("x", torch.ones(2))
        with pytest.raises(ValueError, match="taken"):
            out.add("x", torch.ones(2))
        with pytest.raises(ValueError, match="taken"):
            out.add("__metadata__", torch.ones(2))
        with pytest.raises(ValueError, match="no dtype"):
            out.add("c", torch.ones(2, dtype=torch.complex64))


def test_written_from_their_own_memory_all_at_once(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "block.safetensors"
    write_tensors(path, tensors, metadata={"block": "0"})
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    assert all(loaded[name].dtype == t.dtype and torch.equal(loaded[name], t) for name, t in tensors.items())
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"block": "0"}
    spooled = tmp_path / "spooled.safetensors"
    with SpooledSafetensors(spooled, metadata={"block": "0"}) as out:
        for name, tensor in tensors.items():
            out.add(name, tensor)
    assert spooled.read_bytes() == path.read_bytes()  # one layout, however written
    with pytest.raises(ValueError, match="no dtype"):
        write_tensors(tmp_path / "c.safetensors", {"c": torch.ones(2, dtype=torch.complex64)})
