"""The store contract, once for the local directory and once for a real SeaweedFS S3 gateway."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.artifacts import (
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStore,
    BadKey,
    LocalStore,
    StoreUnavailable,
    open_store,
)
from core.artifacts.s3 import S3Store, parse_s3_url
from core.config import ConfigError, Settings
from tests.support.servers import ObjectStoreServer

_prefixes = itertools.count()


def s3_store(server: ObjectStoreServer, prefix: str | None = None) -> S3Store:
    return S3Store(server.bucket, prefix if prefix is not None else f"t{next(_prefixes)}/",
                   endpoint_url=server.endpoint_url, region="us-east-1",
                   access_key_id="test", secret_access_key="test", timeout_seconds=10, attempts=2)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.objectstore)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "artifacts")
    else:
        yield s3_store(request.getfixturevalue("object_store_server"))


def test_put_get_list_delete_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "index.ann"
    source.write_bytes(b"\x00\x01" * 5000)
    store.put_file("indexes/v1/index.ann", source)
    store.put_bytes("indexes/v1/ids.npy", b"ids")
    store.put_bytes("indexes/v2/ids.npy", b"other")
    assert store.exists("indexes/v1/index.ann") and not store.exists("indexes/v3/ids.npy")
    assert store.read_bytes("indexes/v1/ids.npy") == b"ids"
    dest = tmp_path / "out" / "copy.ann"
    store.get_file("indexes/v1/index.ann", dest)
    assert dest.read_bytes() == source.read_bytes()
    assert list(store.list_keys("indexes/v1/")) == ["indexes/v1/ids.npy", "indexes/v1/index.ann"]
    assert list(store.list_keys("")) == ["indexes/v1/ids.npy", "indexes/v1/index.ann", "indexes/v2/ids.npy"]
    store.delete(["indexes/v1/ids.npy", "indexes/v1/never-there"])
    assert list(store.list_keys("indexes/")) == ["indexes/v1/index.ann", "indexes/v2/ids.npy"]


def test_a_key_is_written_once(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("models/m1/checkpoint.pt", b"first")
    other = tmp_path / "second.pt"
    other.write_bytes(b"second")
    with pytest.raises(ArtifactExists, match="models/m1/checkpoint.pt"):
        store.put_bytes("models/m1/checkpoint.pt", b"second")
    with pytest.raises(ArtifactExists):
        store.put_file("models/m1/checkpoint.pt", other)
    assert store.read_bytes("models/m1/checkpoint.pt") == b"first"


def test_missing_keys_say_which(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="media/aa/nothing.jpg"):
        store.read_bytes("media/aa/nothing.jpg")
    with pytest.raises(ArtifactNotFound, match="media/aa/nothing.jpg"):
        store.get_file("media/aa/nothing.jpg", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # no partial download left behind
    assert list(store.list_keys("media/")) == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/../b", "a/./b", "a/.hidden", "a\\b", "a b",
                                 "x" * 1025])
def test_bad_keys_are_refused_before_any_io(store: ArtifactStore, key: str) -> None:
    with pytest.raises(BadKey):
        store.put_bytes(key, b"x")
    with pytest.raises(BadKey):
        store.exists(key)


def test_local_store_never_shows_writes_in_flight(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "indexes" / "v1").mkdir(parents=True)
    (tmp_path / "indexes" / "v1" / ".index.ann.incoming.tmp").write_bytes(b"half")
    assert list(store.list_keys("")) == []
    assert store.local_path("indexes/v1/index.ann") == tmp_path.resolve() / "indexes/v1/index.ann"


@pytest.mark.objectstore
def test_a_store_that_is_down_is_unavailable_not_missing(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    store = S3Store("lookalike-test", "p/", endpoint_url=f"http://127.0.0.1:{free_port()}",
                    access_key_id="test", secret_access_key="test", timeout_seconds=1, attempts=1)
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        store.read_bytes("models/m1/checkpoint.pt")
    with pytest.raises(StoreUnavailable):
        store.exists("models/m1/checkpoint.pt")
    with pytest.raises(StoreUnavailable):
        list(store.list_keys(""))


@pytest.mark.objectstore
def test_a_missing_bucket_is_unavailable(object_store_server: ObjectStoreServer) -> None:
    store = S3Store("no-such-bucket-here", "", endpoint_url=object_store_server.endpoint_url,
                    access_key_id="test", secret_access_key="test", timeout_seconds=2, attempts=1)
    with pytest.raises(StoreUnavailable, match="refused a/b"):  # AWS says NoSuchBucket, SeaweedFS AccessDenied
        store.put_bytes("a/b", b"x")


def test_s3_urls_and_settings() -> None:
    assert parse_s3_url("s3://shop-artifacts") == ("shop-artifacts", "")
    assert parse_s3_url("s3://shop-artifacts/prod/eu/") == ("shop-artifacts", "prod/eu/")
    with pytest.raises(ValueError, match="3 to 63"):
        parse_s3_url("s3://ab/x")
    with pytest.raises(ConfigError, match="LOOKALIKE_ARTIFACT_STORE"):
        Settings(artifact_store="gs://bucket")
    with pytest.raises(ConfigError, match="LOOKALIKE_ARTIFACT_STORE"):
        open_store(Settings(artifact_store="s3://x"))
    local = open_store(Settings(home=Path("/tmp/h")))
    assert isinstance(local, LocalStore) and local.root == Path("/tmp/h/artifacts").resolve()
    s3 = open_store(Settings(artifact_store="s3://shop-artifacts/prod", s3_endpoint_url="http://127.0.0.1:9",
                             s3_access_key_id="AKIDEXAMPLE", s3_secret_access_key="s3cr3t-value"))
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("shop-artifacts", "prod/")
    assert s3.url == "s3://shop-artifacts/prod/ at http://127.0.0.1:9"  # never the credentials
