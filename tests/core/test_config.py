from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import ConfigError, DeviceChoice, LogLevel, Settings, ShadowRule


def test_defaults_give_the_embedded_setup() -> None:
    s = Settings.from_env({})
    assert s.embedded
    assert s.resolved_database_url == f"sqlite:///{Path('var/lookalike.db').resolve()}"
    assert s.media_dir == Path("var/artifacts/media").resolve()


def test_environment_is_parsed_by_field_type() -> None:
    s = Settings.from_env({
        "LOOKALIKE_HOME": "/srv/l",
        "LOOKALIKE_BROKER_URL": "redis://127.0.0.1:6379/0",
        "LOOKALIKE_ANNOY_TREES": "80",
        "LOOKALIKE_PROMOTION_MARGIN": "0.02",
        "LOOKALIKE_READS_PUBLIC": "false",
        "LOOKALIKE_DEVICE": "CPU",
        "LOOKALIKE_LOG_LEVEL": "Warning",
        "LOOKALIKE_URL_FETCH_ALLOWED_HOSTS": "images.example.com, cdn.example.com",
        "LOOKALIKE_IMPORT_ROOTS": "/srv/photos, /mnt/shop images,",
        "OTHER_VARIABLE": "ignored",
    })
    assert s.home == Path("/srv/l") and not s.embedded
    assert s.resolved_redis_url == "redis://127.0.0.1:6379/0"
    assert (s.annoy_trees, s.promotion_margin, s.reads_public) == (80, 0.02, False)
    assert s.device is DeviceChoice.CPU and s.log_level is LogLevel.WARNING
    assert s.url_fetch_allowed_hosts == ("images.example.com", "cdn.example.com")
    assert s.import_roots == (Path("/srv/photos"), Path("/mnt/shop images"))


@pytest.mark.parametrize("key,value", [
    ("LOOKALIKE_ANNOY_TREES", "many"),
    ("LOOKALIKE_READS_PUBLIC", "perhaps"),
    ("LOOKALIKE_DEVICE", "tpu"),
    ("LOOKALIKE_LOG_LEVEL", "chatty"),
])
def test_bad_values_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Settings.from_env({key: value})


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.annoy_trees = 3  # type: ignore[misc]
    assert s.replace(annoy_trees=3).annoy_trees == 3


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "CONFIG.md").read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"LOOKALIKE_{f.name.upper()}`" not in doc]
    assert missing == []


def test_to_env_round_trips_every_field() -> None:
    s = Settings(home=Path("/srv/x"), broker_url="redis://h:1/0", device=DeviceChoice.CPU, reads_public=False,
                 url_fetch_allowed_hosts=("a.example", "b.example"), annoy_search_k=-1, promotion_margin=0.5,
                 artifacts_dir=Path("/data/a"), import_roots=(Path("/srv/photos"), Path("/mnt/b")))
    env = s.to_env()
    assert all(key.startswith("LOOKALIKE_") for key in env)
    assert Settings.from_env(env) == s
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_an_orphan_timeout_shorter_than_three_heartbeats_is_refused() -> None:
    with pytest.raises(ConfigError, match="LOOKALIKE_ORPHANED_JOB_SECONDS"):
        Settings(job_heartbeat_seconds=10, orphaned_job_seconds=25)
    assert Settings(job_heartbeat_seconds=10, orphaned_job_seconds=0).orphaned_job_seconds == 0


def test_trusted_proxies_are_addresses_or_networks() -> None:
    s = Settings.from_env({"LOOKALIKE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"})
    assert [str(n) for n in s.trusted_proxy_networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match="LOOKALIKE_TRUSTED_PROXIES: 'nginx'"):
        Settings.from_env({"LOOKALIKE_TRUSTED_PROXIES": "nginx"})


def test_proxy_timeouts_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="LOOKALIKE_PROXY_CLIENT_BODY_TIMEOUT=0"):
        Settings(proxy_client_body_timeout=0)


def test_the_largest_request_is_an_import_or_a_full_item_upload() -> None:
    # 512 MiB import vs ten 20 MiB images: the import; ten 100 MiB images: the upload.
    assert Settings().max_request_bytes == 512 * 1024 * 1024 + 64 * 1024
    assert Settings(max_image_bytes=100 * 1024 * 1024).max_request_bytes == 1000 * 1024 * 1024 + 64 * 1024


def test_a_bad_choice_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="LOOKALIKE_DEVICE: 'tpu' is not one of auto, cpu, cuda"):
        Settings.from_env({"LOOKALIKE_DEVICE": "tpu"})


def test_the_shadow_rule_and_the_query_log_settings() -> None:
    s = Settings.from_env({"LOOKALIKE_SHADOW_MIN_OVERLAP": "0.4", "LOOKALIKE_SHADOW_FEEDBACK_TOLERANCE": "0",
                           "LOOKALIKE_SHADOW_MIN_QUERIES": "7", "LOOKALIKE_QUERY_LOG_SAMPLE_RATE": "1"})
    assert s.shadow == ShadowRule(queries=500, min_queries=7, k=10, min_overlap=0.4, low_overlap_gain=0.05,
                                  feedback_tolerance=0.0)
    assert s.query_log_sample_rate == 1.0 and s.query_log_max_rows == 100_000
    for key, value in (("LOOKALIKE_QUERY_LOG_SAMPLE_RATE", "1.5"), ("LOOKALIKE_SHADOW_MIN_OVERLAP", "nan"),
                       ("LOOKALIKE_SHADOW_K", "0"), ("LOOKALIKE_QUERY_LOG_MAX_ROWS", "0")):
        with pytest.raises(ConfigError, match=key):
            Settings.from_env({key: value})
