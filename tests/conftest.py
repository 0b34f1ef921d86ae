from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slimscout.settings import get_settings


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                      request: pytest.FixtureRequest) -> Iterator[None]:
    """Unit tests write caches to a temporary directory; slow tests share the real cache (built once)."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("SLIMSCOUT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_llama():  # type: ignore[no-untyped-def]
    from compress.catalog import load_model

    return load_model("tiny-llama")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
