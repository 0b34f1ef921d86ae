"""docker-compose.yml and the Dockerfile: the services, healthchecks and the commands the tests run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from slimscout.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "api", "worker"}
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert set(compose["volumes"]) >= {"pgdata", "cache"}


def test_api_service(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["build"] == "."
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    command = api["command"]
    assert command[:2] == ["slimscout", "serve"]
    args = build_parser().parse_args(command[1:])  # the same CLI the tests start
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 8000, 0)
    assert args.storage.startswith("postgresql://") and "@postgres:5432/" in args.storage
    assert api["environment"]["SLIMSCOUT_STORAGE_URL"] == args.storage
    assert "8000:8000" in api["ports"]


def test_worker_service_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    api = compose["services"]["api"]
    assert worker["image"] == api["image"]
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker and "ports" not in worker  # or --scale worker=N would collide
    assert worker["command"][:2] == ["slimscout", "worker"]
    args = build_parser().parse_args(worker["command"][1:])
    assert args.command == "worker" and args.storage == api["command"][-1]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    cache_dir = worker["environment"]["SLIMSCOUT_CACHE_DIR"]
    assert any(volume.split(":")[1] == cache_dir for volume in worker["volumes"])
    assert any(volume.split(":")[1] == cache_dir for volume in api["volumes"])  # artifacts are served from it


def test_dockerfile_installs_cpu_torch_and_the_project() -> None:
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines()
             if line and not line.startswith("#")]
    text = "\n".join(lines)
    assert lines[0].startswith("FROM python:3.11")
    assert '"torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu' in text
    assert "pip install ." in text
    for package in ("slimscout", "compress", "search", "predictor", "storage", "api"):
        assert f"COPY {package} ./{package}" in text
        assert (REPO / package).is_dir()
    cmd = next(line for line in lines if line.startswith("CMD"))
    assert shlex.split(cmd.removeprefix("CMD ").replace('"', "").replace(",", "").strip("[]"))[:2] == \
        ["slimscout", "serve"]
