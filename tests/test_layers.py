"""The layering as a test: the import-linter contracts in pyproject.toml, and the API importing no torch.

``lint-imports`` runs the same contracts from the command line. A failure names the import that
goes the wrong way; move the shared code down (common/ is the bottom), do not add an exception.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "compress", "predictor", "storage", "search", "api", "slimscout", "bench")


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))  # this checkout's packages, not an installed copy
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0


def test_the_contracts_cover_every_package() -> None:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert sorted(config["root_packages"]) == sorted(PACKAGES)
    found = sorted(path.parent.name for path in REPO.glob("*/__init__.py"))
    assert found == sorted(PACKAGES)  # a new top-level package needs its place in the layers
    contracts = {contract["type"]: contract for contract in config["contracts"]}
    layered = {name.strip() for layer in contracts["layers"]["layers"] for name in layer.split("|")}
    assert layered == set(PACKAGES)
    assert contracts["layers"]["layers"][-1] == "common"
    assert "torch" in contracts["forbidden"]["forbidden_modules"]


def test_importing_the_api_loads_no_torch() -> None:
    probe = ("import json, sys; import api.main; api.main.create_app(); "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "api" in loaded
    assert not loaded & {"torch", "transformers", "safetensors", "predictor"}
