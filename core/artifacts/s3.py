"""The S3 store: the same keys in a bucket (AWS S3, MinIO, SeaweedFS), through boto3.

"Written once" is enforced by the store itself where it can be: a single PUT carries
``If-None-Match: *`` (AWS since 2024, MinIO, SeaweedFS), which the server refuses when
the key exists, so two hosts racing on one key cannot both win. Objects above
``SINGLE_PUT_LIMIT`` go up in parts (boto3's transfer manager), which cannot carry the
condition: those are checked with a HEAD first; keys of large objects are index and
checkpoint files whose versions are unique anyway (docs/DECISIONS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from botocore.exceptions import ConnectionError as BotoConnectionError

from core.artifacts.store import (
    ArtifactError,
    ArtifactExists,
    ArtifactNotFound,
    StoreUnavailable,
    check_key,
    check_prefix,
)
from core.atomic_files import replacing

SINGLE_PUT_LIMIT = 4 * 1024**3
"""Bytes one conditional PUT carries (S3 allows 5 GiB); larger objects go up in parts."""
STREAM_CHUNK = 1024**2
"""Bytes read from a GET's body at a time."""
DELETE_BATCH = 1000
"""S3's limit on keys per DeleteObjects call."""
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_EXISTS = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, ``prefix/``); ValueError naming what is wrong."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not 3 <= len(bucket) <= 63:
        raise ValueError(f"{url!r}: a bucket name has 3 to 63 characters")
    prefix = prefix.strip("/")
    return bucket, check_prefix(prefix + "/") if prefix else ""


class S3Store:
    """Keys under ``prefix`` in ``bucket``; errors mapped to the store's own (core.artifacts.store)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, timeout_seconds: float = 10.0,
                 attempts: int = 3) -> None:
        self.bucket, self.prefix = bucket, check_prefix(prefix)
        self.endpoint_url = endpoint_url
        # Short timeouts and few retries: a store that is down must turn into a clear 503
        # (or a cache hit) in seconds, not after botocore's default minute of retries.
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=Config(connect_timeout=timeout_seconds, read_timeout=timeout_seconds,
                          retries={"max_attempts": attempts, "mode": "standard"},
                          s3={"addressing_style": "path"} if endpoint_url else None),
        )
        self._transfer = TransferConfig(multipart_threshold=SINGLE_PUT_LIMIT, use_threads=False)

    @property
    def url(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _error(self, exc: Exception, key: str) -> ArtifactError:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND or status == "404":
                return ArtifactNotFound(f"{key} is not in {self.url}")
            if code in _EXISTS or status == "412":
                return ArtifactExists(f"{key} already exists in {self.url}")
            if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}:
                return StoreUnavailable(f"{self.url} refused {key}: {code}")
            if status.startswith("5"):
                return StoreUnavailable(f"{self.url} failed on {key}: {code or status}")
            return ArtifactError(f"{self.url}: {key}: {code or status}: {exc}")
        if isinstance(exc, (EndpointConnectionError, BotoConnectionError)):
            return StoreUnavailable(f"{self.url} cannot be reached ({key}): {exc}")
        return StoreUnavailable(f"{self.url} failed on {key}: {exc}")

    def put_file(self, key: str, source: Path) -> None:
        name = self._name(key)
        try:
            if Path(source).stat().st_size <= SINGLE_PUT_LIMIT:
                with open(source, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=name, Body=body, IfNoneMatch="*")
                return
            if self.exists(key):
                raise ArtifactExists(f"{key} already exists in {self.url}")
            self.client.upload_file(str(source), self.bucket, name, Config=self._transfer)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data, IfNoneMatch="*")
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    def get_file(self, key: str, dest: Path) -> None:
        # One streamed GET: boto3's download_file sends a HEAD first and runs its transfer
        # machinery per call, ~15 ms more per object, which a worker fetching 70,000 images
        # pays 70,000 times (bench/bench_store.py); unthreaded, it gained nothing on big files.
        name = self._name(key)
        with replacing(Path(dest)) as tmp:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
                with body, open(tmp, "wb") as out:
                    for chunk in body.iter_chunks(STREAM_CHUNK):
                        out.write(chunk)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, key) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, key)
            if isinstance(error, ArtifactNotFound):
                return False
            raise error from exc
        return True

    def list_keys(self, prefix: str) -> Iterator[str]:
        check_prefix(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    yield str(entry["Key"])[len(self.prefix):]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix or "/") from exc

    def delete(self, keys: list[str]) -> None:
        names = [self._name(k) for k in keys]
        for start in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": n} for n in names[start:start + DELETE_BATCH]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, keys[start]) from exc

    def local_path(self, key: str) -> Path | None:
        return None

    def prepare(self) -> None:
        """Create the bucket if it does not exist (a fresh SeaweedFS / MinIO; AWS buckets are made by ops)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise self._error(exc, self.bucket) from exc
