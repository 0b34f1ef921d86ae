"""bench.memory_1b's --max-blocks build and its reading of a mapped file's resident pages (tiny model)."""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import pytest

from bench import memory_1b
from compress.catalog import load_model


@pytest.mark.parametrize("low_memory_limit", [1 << 30, 1])  # the whole model under / over the low-memory limit
def test_the_first_blocks_are_built_with_the_whole_models_low_memory_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low_memory_limit: int) -> None:
    from common.settings import get_settings

    loaded = load_model("tiny-llama")
    model: Any = loaded.model
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(get_settings(), "in_memory_caches_max_bytes", low_memory_limit)
    result = memory_1b.build_first_blocks(tmp_path / "model", tmp_path / "cache", 2, 0, 256)
    assert result["blocks"] == 2 and result["layers"] == result["layers_built"] == 14  # 7 projections a block
    assert result["low_memory"] == (low_memory_limit == 1)
    manifest = json.loads((Path(result["directory"]) / "manifest.json").read_text())
    assert sorted({name.split(".")[2] for name in manifest["layers"]}) == ["0", "1"]
    assert Path(result["directory"]).is_relative_to(tmp_path / "cache" / "first-2-blocks")


def test_resident_pages_of_a_mapped_file_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (8 << 20))
    assert memory_1b._mapped_rss_kib(os.getpid(), path.resolve()) == 0  # not mapped
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        touched = sum(mapped[i] for i in range(0, 4 << 20, 4096))  # read the first 4 MiB
        assert touched == 1024
        resident = memory_1b._mapped_rss_kib(os.getpid(), path.resolve())
        assert resident is not None and 4096 <= resident <= 8192
    status = memory_1b._status_kib(os.getpid())
    assert status["VmHWM"] >= status["VmRSS"] > 0 and "RssAnon" in status
    assert memory_1b._mapped_rss_kib(2**22 + 12345, path) is None  # no such process
