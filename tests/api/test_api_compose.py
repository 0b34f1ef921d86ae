"""docker-compose.yml and the Dockerfile, parsed: services wired to each other and to the CLI and settings they run.

docker-compose.yml is read as compose reads it (YAML anchors resolved, ``${VAR:-default}``
interpolated with the defaults), then checked for what makes the stack work: each command parses
with slimscout's own CLI, each environment builds slimscout's ``Settings``, the storage URL names
the postgres service's own user, password and database, the healthchecks probe what they claim
(the API's is run against a live server), volumes hold what the settings point at.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml
from sqlalchemy import make_url

from common.settings import Settings
from slimscout.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with the default (no variable is set in the test)."""
    if isinstance(value, str):
        return DEFAULT.sub(lambda match: match.group(2), value)
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text()))
    assert isinstance(document, dict)
    return document


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → volume name of the service's named volumes."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}


def settings_of(service: dict[str, Any]) -> Settings:
    """The Settings a container of this service would build from its environment (and nothing else)."""
    env = {key: value for key, value in service["environment"].items() if value != ""}  # compose: "" is unset
    with patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)  # type: ignore[call-arg]


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "api", "worker"}
    assert set(compose["volumes"]) == {"pgdata", "cache", "models"}
    for name, service in services.items():
        for volume in mounts(service).values():
            assert volume in compose["volumes"], (name, volume)  # no bind mount of the host by accident
    postgres = services["postgres"]
    assert postgres["image"].split(":")[0] == "postgres" and int(postgres["image"].split(":")[1]) >= 14
    assert mounts(postgres) == {"/var/lib/postgresql/data": "pgdata"}
    kind, command = postgres["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    env = postgres["environment"]
    assert shlex.split(command) == ["pg_isready", "-U", env["POSTGRES_USER"], "-d", env["POSTGRES_DB"]]


def test_api_service(compose: dict[str, Any]) -> None:
    api, postgres = compose["services"]["api"], compose["services"]["postgres"]
    assert api["build"] == "." and api["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    command = api["command"]
    assert command[0] == "slimscout"
    args = build_parser().parse_args(command[1:])  # the same CLI the tests start
    assert (args.command, args.host, args.port, args.workers) == ("serve", "0.0.0.0", 8000, 0)
    assert api["ports"] == [f"{args.port}:{args.port}"]
    url = make_url(args.storage)
    env = postgres["environment"]
    assert (url.drivername, url.host, url.port) == ("postgresql", "postgres", 5432)
    assert (url.username, url.password, url.database) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"],
                                                          env["POSTGRES_DB"])
    settings = settings_of(api)
    assert settings.storage_url == args.storage
    assert settings.api_token is None  # auth off unless SLIMSCOUT_API_TOKEN is set
    assert mounts(api)[str(settings.cache_dir)] == "cache"  # artifacts are served from the workers' cache
    assert [str(root) for root in settings.model_roots] == ["/models"] and mounts(api)["/models"] == "models"
    assert "/models:ro" in " ".join(api["volumes"])


def test_worker_service_scales(compose: dict[str, Any]) -> None:
    worker, api = compose["services"]["worker"], compose["services"]["api"]
    assert worker["image"] == api["image"] and worker["build"] == api["build"]
    assert worker["deploy"]["replicas"] >= 2
    assert "container_name" not in worker and "ports" not in worker  # or --scale worker=N would collide
    args = build_parser().parse_args(worker["command"][1:])
    assert worker["command"][0] == "slimscout" and args.command == "worker"
    assert args.storage == build_parser().parse_args(api["command"][1:]).storage
    assert worker["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "api": {"condition": "service_healthy"}}  # the API migrates the database
    settings = settings_of(worker)
    assert settings.storage_url == args.storage and settings_of(api).cache_dir == settings.cache_dir
    assert mounts(worker) == mounts(api)
    grace = worker["stop_grace_period"]
    assert re.fullmatch(r"\d+m", grace) and int(grace[:-1]) >= 1  # time to finish the trial in hand


def test_api_healthcheck_probes_the_served_healthz(compose: dict[str, Any], serve: Callable[..., str]) -> None:
    """The healthcheck's own command, pointed at a live server's port, passes; at a closed port, fails."""
    api = compose["services"]["api"]
    kind, python, flag, code = api["healthcheck"]["test"]
    assert (kind, python, flag) == ("CMD", "python", "-c")
    port = build_parser().parse_args(api["command"][1:]).port
    assert f"http://127.0.0.1:{port}/healthz" in code
    live = serve().rsplit(":", 1)[1]
    probe = [sys.executable, "-c", code.replace(f":{port}/", f":{live}/")]
    assert subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0
    dead = [sys.executable, "-c", code.replace(f":{port}/", ":9/")]
    assert subprocess.run(dead, capture_output=True, timeout=30, check=False).returncode != 0


def test_dockerfile_installs_cpu_torch_and_every_package() -> None:
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    runs = [line for line in lines if line.startswith("RUN ")]
    torch = next(shlex.split(line) for line in runs if "torch==" in line)
    pin = next(dep for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
               if dep.startswith("torch"))
    assert pin in torch and torch[torch.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    copied = {shlex.split(line)[1] for line in lines if line.startswith("COPY ")}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = {pattern.rstrip("*") for pattern in packages["include"]}
    assert installed <= copied, installed - copied  # every package pip installs is in the image
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert json.loads(cmd.removeprefix("CMD "))[:2] == ["slimscout", "serve"]
