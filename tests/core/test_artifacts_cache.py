"""Directory versions in a store and the host cache in front of it, on a real SeaweedFS."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.artifacts import (
    ArtifactCache,
    CorruptVersion,
    LocalStore,
    StoreUnavailable,
    VersionNotPublished,
    delete_directory,
    publish_directory,
    published_versions,
    read_directory,
)
from core.artifacts.s3 import S3Store
from core.artifacts.versions import FILE_LIST
from tests.core.test_artifacts_store import s3_store
from tests.support.servers import ObjectStoreServer
from tests.support.store_counts import counted_cold_fill

pytestmark = pytest.mark.objectstore


def make_version(folder: Path, seed: int = 0, sizes: tuple[int, ...] = (3000, 200)) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (folder / f"part{i}.bin").write_bytes(rng.bytes(size))
    (folder / "manifest.json").write_text(json.dumps({"seed": seed}))
    return folder


def test_a_version_is_seen_only_once_its_file_list_is_there(object_store_server: ObjectStoreServer,
                                                            tmp_path: Path) -> None:
    store = s3_store(object_store_server)
    folder = make_version(tmp_path / "v1")
    # A writer that died after the first file: files without a list are not a version.
    store.put_file("indexes/v1/part0.bin", folder / "part0.bin")
    assert published_versions(store, "indexes/") == []
    with pytest.raises(VersionNotPublished, match="indexes/v1/"):
        read_directory(store, "indexes/v1/")
    # The retry uploads the rest, the list last, and does not trip over the file already there.
    version = publish_directory(store, "indexes/v1/", folder)
    assert published_versions(store, "indexes/") == ["indexes/v1/"]
    assert read_directory(store, "indexes/v1/") == version
    assert sorted(version.files) == ["manifest.json", "part0.bin", "part1.bin"]
    assert version.files["part0.bin"].size == 3000
    # Publishing the same folder again is a no-op; other bytes under the same version are refused.
    assert publish_directory(store, "indexes/v1/", folder) == version
    other = make_version(tmp_path / "other", seed=1)
    with pytest.raises(CorruptVersion, match="versions never change"):
        publish_directory(store, "indexes/v1/", other)
    # Retention removes a version whole, its list first.
    publish_directory(store, "indexes/v2/", other)
    assert delete_directory(store, "indexes/v1/") == 4
    assert published_versions(store, "indexes/") == ["indexes/v2/"]
    assert list(store.list_keys("indexes/v1/")) == []


def test_cache_downloads_once_checks_bytes_and_serves_while_the_store_is_down(tmp_path: Path) -> None:
    server = ObjectStoreServer.start()  # its own server: this test stops it
    try:
        store = s3_store(server)
        version = publish_directory(store, "indexes/v1/", make_version(tmp_path / "v1"))
        cache = ArtifactCache(store, tmp_path / "cache", max_bytes=10**6)
        with cache.fetch_version(version) as pinned:
            assert {n: p.read_bytes() for n, p in pinned.paths.items()} == {
                n: (tmp_path / "v1" / n).read_bytes() for n in version.files}
            first = {n: os.stat(p).st_ino for n, p in pinned.paths.items()}
        # A second reader on the host (a new cache object: another process) finds the files.
        again = ArtifactCache(store, tmp_path / "cache", max_bytes=10**6)
        server.stop()
        with again.fetch_version(version) as pinned:
            assert {n: os.stat(p).st_ino for n, p in pinned.paths.items()} == first
        with pytest.raises(StoreUnavailable):
            again.fetch("indexes/v1/not-cached.bin")
    finally:
        server.close()


def test_a_download_that_does_not_match_its_list_is_refused_and_not_kept(object_store_server: ObjectStoreServer,
                                                                        tmp_path: Path) -> None:
    store = s3_store(object_store_server)
    folder = make_version(tmp_path / "v1")
    # Someone wrote a wrong list (or the object was damaged): sizes match, contents do not.
    store.put_file("indexes/v1/part0.bin", folder / "part0.bin")
    store.put_file("indexes/v1/part1.bin", folder / "part1.bin")
    store.put_file("indexes/v1/manifest.json", folder / "manifest.json")
    listed = json.loads(publish_directory(LocalStore(tmp_path / "ref"), "v/", folder).to_json())
    listed["files"]["part0.bin"]["sha256"] = "0" * 64
    store.put_bytes("indexes/v1/" + FILE_LIST, json.dumps(listed).encode())
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=10**6)
    with pytest.raises(CorruptVersion, match="indexes/v1/part0.bin .* does not match"):
        cache.fetch_version(read_directory(store, "indexes/v1/"))
    assert not (cache.objects / "indexes/v1/part0.bin").exists()
    # Only files that matched their list stay cached (manifest.json sorts first); none stays pinned.
    assert cache.size() == (folder / "manifest.json").stat().st_size
    cache.max_bytes = 0
    assert cache.evict() == ["indexes/v1/manifest.json"]


def test_eviction_is_least_recently_used_and_never_takes_a_pinned_file(object_store_server: ObjectStoreServer,
                                                                       tmp_path: Path) -> None:
    store = s3_store(object_store_server)
    for name in "abcd":
        store.put_bytes(f"media/{name}.jpg", name.encode() * 1000)
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=2500)
    held = cache.fetch("media/a.jpg")  # pinned: a served version maps it
    with cache.path("media/b.jpg"):
        pass
    with cache.path("media/c.jpg"):  # over budget: b (least recent, unpinned) goes, a stays
        pass
    cached = sorted(p.name for p in (cache.objects / "media").iterdir())
    assert cached == ["a.jpg", "c.jpg"] and cache.size() == 2000
    with cache.path("media/d.jpg"):  # c goes; a is still pinned even though it is older
        assert sorted(p.name for p in (cache.objects / "media").iterdir()) == ["a.jpg", "d.jpg"]
    held.close()
    cache.max_bytes = 1000
    assert cache.evict() == ["media/a.jpg"]  # once released, the oldest goes first
    assert cache.size() == 1000


def _fill(args: tuple[str, str, str, str]) -> int:
    endpoint, bucket, prefix, root = args
    store = S3Store(bucket, prefix, endpoint_url=endpoint, access_key_id="test", secret_access_key="test")
    version = read_directory(store, "indexes/v1/")
    cache = ArtifactCache(store, Path(root), max_bytes=10**8)
    with cache.fetch_version(version) as pinned:
        return sum(p.stat().st_size for p in pinned.paths.values())


def test_several_processes_fill_one_cache_at_once(object_store_server: ObjectStoreServer, tmp_path: Path) -> None:
    store = s3_store(object_store_server)
    version = publish_directory(store, "indexes/v1/", make_version(tmp_path / "v1", sizes=(2_000_000, 500_000)))
    expected = sum(e.size for e in version.files.values())
    args = (object_store_server.endpoint_url, store.bucket, store.prefix, str(tmp_path / "cache"))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_fill, [args] * 4) == [expected] * 4
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=10**8)
    assert cache.size() == expected
    leftovers = [p.name for p in cache.objects.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # every download landed whole, no temp file left


def test_a_cold_host_downloads_each_file_exactly_once(object_store_server: ObjectStoreServer,
                                                     tmp_path: Path) -> None:
    store = s3_store(object_store_server)
    version = publish_directory(store, "indexes/v1/", make_version(tmp_path / "v1", sizes=(3_000_000, 400_000)))
    args = (object_store_server.endpoint_url, store.bucket, store.prefix, "indexes/v1/", str(tmp_path / "cache"),
            10**8)
    with multiprocessing.get_context("spawn").Pool(4) as pool:  # four server workers of one host start at once
        first = pool.map(counted_cold_fill, [args] * 4)
        again = pool.map(counted_cold_fill, [args] * 4)  # restarted workers: the cache has it all
    downloads = sum((Counter(c) for c in first), Counter())
    assert downloads == {version.key(name): 1 for name in version.files}, first
    assert all(c == {} for c in again), again


def _serve(root: str, args: tuple[str, str, str], pinned: Any, release: Any) -> None:
    """A server worker in its own process: maps (pins) version v1 until told to let go."""
    endpoint, bucket, prefix = args
    store = S3Store(bucket, prefix, endpoint_url=endpoint, access_key_id="test", secret_access_key="test")
    with ArtifactCache(store, Path(root), max_bytes=10**6).fetch_version(read_directory(store, "indexes/v1/")):
        pinned.set()
        release.wait(60)


def test_filling_past_the_bound_never_evicts_what_another_process_serves(object_store_server: ObjectStoreServer,
                                                                         tmp_path: Path) -> None:
    store = s3_store(object_store_server)
    version = publish_directory(store, "indexes/v1/", make_version(tmp_path / "v1", sizes=(300_000, 100_000)))
    served = sum(e.size for e in version.files.values())
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    pinned, release = ctx.Event(), ctx.Event()
    server = ctx.Process(target=_serve, args=(str(root), (object_store_server.endpoint_url, store.bucket,
                                                          store.prefix), pinned, release))
    server.start()
    try:
        assert pinned.wait(60), "the serving process did not pin the version"
        cache = ArtifactCache(store, root, max_bytes=served + 250_000)
        inodes = {name: (root / "objects" / version.key(name)).stat().st_ino for name in version.files}
        for i in range(6):  # 1.2 MB of other objects through a cache bounded at ~0.65 MB
            store.put_bytes(f"media/filler{i}.bin", bytes([i]) * 200_000)
            with cache.path(f"media/filler{i}.bin"):
                pass
        evicted = cache.evict()
        # The served files are the least recently used, yet all stayed, the same files, intact.
        assert {name: (root / "objects" / version.key(name)).stat().st_ino for name in version.files} == inodes
        for name, entry in version.files.items():
            assert (root / "objects" / version.key(name)).read_bytes() == (tmp_path / "v1" / name).read_bytes()
        assert not any(k.startswith("indexes/") for k in evicted)
        kept = [k for k in cache.keys() if k.startswith("media/")]
        assert kept == ["media/filler5.bin"] and cache.size() <= cache.max_bytes  # the rest went, newest kept
    finally:
        release.set()
        server.join(30)
    assert server.exitcode == 0
    cache.max_bytes = 0  # once nobody maps them, they go like anything else
    assert sorted(cache.evict()) == sorted([version.key(n) for n in version.files] + ["media/filler5.bin"])


def test_a_local_store_is_read_in_place(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    version = publish_directory(store, "models/m1/", make_version(tmp_path / "m1"))
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=0)
    with cache.fetch_version(version) as pinned:
        assert pinned.paths["part0.bin"] == (tmp_path / "artifacts/models/m1/part0.bin").resolve()
    assert list(cache.objects.iterdir()) == []
