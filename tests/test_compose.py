"""docker-compose.yml is valid and runs the stack with commands the CLI really has.

There is no Docker engine on these machines, so the file is checked the way the
issue asks: `docker compose config` (or Debian's `docker-compose config`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from cli.main import lookalike
from stack.services import API_ARGS, BEAT_ARGS, MIGRATE_COMMAND, PROXY_ARGS, STORE_INIT_ARGS, WORKER_ARGS

ROOT = Path(__file__).resolve().parents[1]


def _compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (make test installs it)")


def _resolved_config() -> dict:
    """The file as `docker compose config` resolves it (anchors merged, variables filled in)."""
    result = subprocess.run(
        [*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env={"LOOKALIKE_ADMIN_API_KEY": "test-key", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_complete() -> None:
    config = _resolved_config()
    assert set(config["services"]) == {"postgres", "redis", "seaweedfs", "migrate", "store-init", "api", "nginx",
                                       "worker", "beat"}
    for name in ("api", "worker", "beat", "migrate", "store-init"):
        env = config["services"][name]["environment"]
        assert env["LOOKALIKE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["LOOKALIKE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["LOOKALIKE_ARTIFACT_STORE"].startswith("s3://")
        assert env["LOOKALIKE_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    for name in ("postgres", "redis", "seaweedfs", "api", "nginx"):
        assert "healthcheck" in config["services"][name]


def test_compose_services_share_no_artifacts_volume() -> None:
    """Hosts share PostgreSQL, Redis and the object store only: no app volume is mounted twice."""
    services = _resolved_config()["services"]
    mounts: dict[str, list[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]  # long or short form
            mounts.setdefault(source, []).append(name)
    assert {source: users for source, users in mounts.items() if len(users) > 1} == {}
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["store-init"]["condition"] == "service_completed_successfully"


def test_compose_puts_nginx_in_front_of_the_api_and_trusts_only_its_network() -> None:
    """Only nginx publishes the port; the api believes forwarded headers from the edge network alone."""
    config = _resolved_config()
    services = config["services"]
    assert [name for name, service in services.items() if service.get("ports")] == ["nginx"]
    assert services["nginx"]["ports"][0]["target"] == 8000
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert set(services["nginx"]["networks"]) == {"edge"}
    assert set(services["api"]["networks"]) == {"default", "edge"}
    members = [name for name, service in services.items() if "edge" in service.get("networks", {})]
    assert sorted(members) == ["api", "nginx"]
    subnet = config["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert services["api"]["environment"]["LOOKALIKE_TRUSTED_PROXIES"] == subnet
    # The proxy gets none of the app's secrets.
    assert "LOOKALIKE_ADMIN_API_KEY" not in services["nginx"]["environment"]


def test_compose_commands_exist_in_the_cli() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("api", "nginx", "worker", "beat", "store-init"):
        argv = services[name]["command"]
        assert argv[0] == "lookalike"
        command = lookalike.commands[argv[1]]
        if isinstance(command, click.Group):
            command, argv = command.commands[argv[2]], argv[1:]
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        flags = [a for a in argv[2:] if a.startswith("--")]
        assert set(flags) <= known, (name, set(flags) - known)
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]


def test_make_stack_runs_the_same_commands_as_compose() -> None:
    """The native supervisor and docker-compose.yml must not drift apart."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["migrate"]["command"] == list(MIGRATE_COMMAND)
    assert services["api"]["command"] == ["lookalike", *API_ARGS, "--bind", "0.0.0.0:8000"]
    assert services["nginx"]["command"] == ["lookalike", *PROXY_ARGS, "--listen", "0.0.0.0:8000",
                                            "--upstream", "api:8000"]
    assert services["worker"]["command"] == ["lookalike", *WORKER_ARGS]
    assert services["beat"]["command"] == ["lookalike", *BEAT_ARGS]
    assert services["store-init"]["command"] == ["lookalike", *STORE_INIT_ARGS]


def test_every_variable_the_compose_file_reads_is_documented() -> None:
    read = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    doc = (ROOT / "docs" / "CONFIG.md").read_text()
    assert read and not [name for name in read if f"`{name}`" not in doc]
