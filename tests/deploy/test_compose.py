"""The deployment files are validated by parsing them, since no Docker engine runs here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict) -> dict:
    env = service.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_compose_has_every_service(compose: dict) -> None:
    assert set(compose["services"]) == {"redis", "minio", "create-bucket", "api", "worker"}


def test_every_long_running_service_has_a_healthcheck(compose: dict) -> None:
    for name in ("redis", "minio", "api", "worker"):
        check = compose["services"][name].get("healthcheck")
        assert check and check["test"], f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}


def test_redis_persists_to_a_volume(compose: dict) -> None:
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in compose["volumes"]


def test_bucket_is_created_after_minio_is_healthy(compose: dict) -> None:
    job = compose["services"]["create-bucket"]
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing local/datasets" in " ".join(job["command"])


def test_api_and_worker_share_the_service_environment(compose: dict) -> None:
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    for service in (api, worker):
        env = _env(service)
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["SPARK_MASTER"].startswith("${SPARK_MASTER")
        # The worker re-checks each job's grants: it needs the same access settings.
        for name in ("APP_API_TOKENS", "APP_PRINCIPALS_FILE", "APP_ALLOWED_TARGETS",
                     "APP_ALLOWED_SOURCES", "APP_ALLOWED_SOURCE_PATHS"):  # fmt: skip
            assert name in env, name
    assert api["build"] == "."
    assert api["image"] == worker["image"] == "mds-convert:latest"


def test_worker_is_scalable(compose: dict) -> None:
    worker = compose["services"]["worker"]
    # --scale worker=N fails with a fixed container name or a published host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"


def test_commands_exist_in_the_cli(compose: dict) -> None:
    from app import cli

    parser = cli.build_parser()
    for name in ("api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "mds-convert"
        parser.parse_args(command[1:])  # raises SystemExit on an unknown subcommand or flag
    parser.parse_args(compose["services"]["worker"]["healthcheck"]["test"][2:])


def test_dockerfile_runs_as_non_root_with_java_from_the_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "openjdk-17-jre-headless" in text
    assert re.search(r"^USER mds$", text, re.M)
    assert "pip install --no-deps -r requirements/service.lock" in text
    for copied in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing path {copied}"


def test_lock_pins_every_service_dependency() -> None:
    lines = [
        line for line in (ROOT / "requirements/service.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lines)
    needed_pins = ("fastapi", "celery", "redis", "pyspark", "boto3", "zstandard", "xxhash", "numpy")
    for needed in needed_pins:
        assert needed in pins, f"{needed} missing from requirements/service.lock"
    assert "torch" not in pins, "the service image must not install torch"
