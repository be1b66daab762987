"""``lookalike store init|status`` against a real SeaweedFS, and against one that is not there."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import lookalike
from core.artifacts.s3 import S3Store
from tests.support.servers import ObjectStoreServer, free_port

pytestmark = pytest.mark.objectstore


def env_for(tmp_path: Path, store: str, endpoint: str) -> dict[str, str]:
    return {"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_ARTIFACT_STORE": store,
            "LOOKALIKE_S3_ENDPOINT_URL": endpoint, "LOOKALIKE_S3_ACCESS_KEY_ID": "test",
            "LOOKALIKE_S3_SECRET_ACCESS_KEY": "test"}


def test_init_creates_the_bucket_and_status_reports(object_store_server: ObjectStoreServer, tmp_path: Path) -> None:
    bucket = f"fresh-{secrets.token_hex(4)}"
    env = env_for(tmp_path, f"s3://{bucket}/shop", object_store_server.endpoint_url)
    runner = CliRunner()
    done = runner.invoke(lookalike, ["store", "init"], env=env)
    assert done.exit_code == 0, done.output
    assert f"artifact store ready: s3://{bucket}/shop/" in done.output
    check = S3Store(bucket, "shop/", endpoint_url=object_store_server.endpoint_url,
                    access_key_id="test", secret_access_key="test")
    assert list(check.list_keys("")) == []  # the probe was removed
    assert runner.invoke(lookalike, ["store", "init"], env=env).exit_code == 0  # again: nothing to do
    status = runner.invoke(lookalike, ["store", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["index_versions"] == [] and report["cache"]["objects"] == 0


def test_a_store_that_cannot_be_reached_is_exit_1_with_the_reason(tmp_path: Path) -> None:
    env = env_for(tmp_path, "s3://nowhere-bucket", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(lookalike, ["store", "init"], env=env)
    assert result.exit_code == 1 and "cannot be reached" in result.output
