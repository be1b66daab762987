"""Artifacts shared between hosts: a store (local folder or S3), versioned directories, a host cache.

``open_store(settings)`` and ``open_cache(settings)`` are the two entry points; the
rest of the project names keys (core.artifacts.store) and directory versions
(core.artifacts.versions), never a bucket or a path of another host.
"""

from __future__ import annotations

from core.artifacts.cache import ArtifactCache, CachedFile, PinnedVersion
from core.artifacts.store import (
    ArtifactError,
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStore,
    BadKey,
    LocalStore,
    StoreUnavailable,
)
from core.artifacts.versions import (
    CorruptVersion,
    DirectoryVersion,
    VersionNotPublished,
    delete_directory,
    publish_directory,
    published_versions,
    read_directory,
)
from core.config import ConfigError, Settings

__all__ = [
    "ArtifactCache", "ArtifactError", "ArtifactExists", "ArtifactNotFound", "ArtifactStore", "BadKey",
    "CachedFile", "CorruptVersion", "DirectoryVersion", "LocalStore", "PinnedVersion", "StoreUnavailable",
    "VersionNotPublished", "delete_directory", "open_cache", "open_store", "publish_directory",
    "published_versions", "read_directory",
]


def open_store(settings: Settings) -> ArtifactStore:
    """The configured store: the local artifacts directory, or ``settings.artifact_store``'s bucket."""
    if not settings.artifact_store:
        return LocalStore(settings.resolved_artifacts_dir)
    from core.artifacts.s3 import S3Store, parse_s3_url  # boto3 loads only where S3 is configured

    try:
        bucket, prefix = parse_s3_url(settings.artifact_store)
    except ValueError as exc:
        raise ConfigError(f"LOOKALIKE_ARTIFACT_STORE: {exc}") from exc
    return S3Store(bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key)


def open_cache(settings: Settings, store: ArtifactStore | None = None) -> ArtifactCache:
    """This host's cache in front of ``store`` (default: the configured one)."""
    return ArtifactCache(store if store is not None else open_store(settings), settings.resolved_cache_dir,
                         settings.cache_max_bytes)
