"""Counting what a host downloads from the store: a store wrapper and a cold-start fill in a process.

The cache (core.artifacts.cache) downloads through ``store.get_file`` only, so a wrapper
that counts those calls per key counts the GETs one process sends for whole objects
(boto3 may split a large one into ranged GETs; that is still one download of the key).
Used by the cache tests and bench/bench_store.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactCache, ArtifactStore, read_directory
from core.artifacts.s3 import S3Store


class CountingStore:
    """``inner`` with every ``get_file`` counted in ``gets`` (key -> downloads)."""

    def __init__(self, inner: ArtifactStore) -> None:
        self.inner = inner
        self.gets: Counter[str] = Counter()

    def get_file(self, key: str, dest: Path) -> None:
        self.gets[key] += 1
        self.inner.get_file(key, dest)

    def __getattr__(self, name: str) -> Any:  # everything else is the inner store's
        return getattr(self.inner, name)


def counted_cold_fill(args: tuple[str, str, str, str, str, int]) -> dict[str, int]:
    """In a child process (one of a host's server workers): fetch and pin a directory version
    through the host's cache, as an API worker does at start; its downloads per key."""
    endpoint, bucket, prefix, version_prefix, cache_root, max_bytes = args
    store = CountingStore(S3Store(bucket, prefix, endpoint_url=endpoint, region="us-east-1",
                                  access_key_id="test", secret_access_key="test"))
    version = read_directory(store, version_prefix)
    with ArtifactCache(store, Path(cache_root), max_bytes).fetch_version(version):
        pass
    return dict(store.gets)
