"""One frozen settings object, read from ``LOOKALIKE_*`` environment variables.

This is the only module that reads the environment. Every factory in the project
(``make_engine``, ``make_celery``, ``create_app``) takes a :class:`Settings`, so a
test can build a whole app from an explicit object without touching ``os.environ``.
The defaults give the embedded setup: a SQLite file and the artifacts under ``./var``.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

ENV_PREFIX = "LOOKALIKE_"

IMPORT_MAX_BYTES = 512 * 1024 * 1024
"""Largest catalog file (CSV or JSONL) one ``POST /api/v1/imports`` upload may carry."""
MAX_UPLOAD_IMAGES = 10
"""Most images one ``PUT /api/v1/items/<id>`` request may upload."""
MULTIPART_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and small text fields next to the uploaded files."""


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class DeviceChoice(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class LogLevel(enum.StrEnum):
    """``LOOKALIKE_LOG_LEVEL``: a standard Python logging level (any case in the environment)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class RerankMode(str, enum.Enum):
    """``LOOKALIKE_RERANK``: neighbour-averaging re-ranking (core/rerank.py, docs/DECISIONS.md)."""

    NONE = "none"
    QUERY_EXPANSION = "query_expansion"
    """alpha query expansion: a second index query per search."""
    DATABASE_AUGMENTATION = "database_augmentation"
    """Catalog vectors averaged with their neighbours, offline, before the index is built."""
    BOTH = "both"


@dataclass(frozen=True)
class ShadowRule:
    """How a retrain's shadow evaluation decides (``LOOKALIKE_SHADOW_*``; worker/flows/promotion.py).

    Refused: a candidate that ranks fewer feedback pairs correctly than the active model
    minus ``feedback_tolerance`` x the pairs, or whose mean top-k overlap with the active
    model is below ``min_overlap`` while its holdout gain is below ``low_overlap_gain``.
    Skipped (the holdout alone decides) with fewer than ``min_queries`` replayable queries.
    """

    queries: int
    """The most recent logged queries replayed."""
    min_queries: int
    k: int
    min_overlap: float
    low_overlap_gain: float
    feedback_tolerance: float


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with embedded-setup defaults.

    Each field maps to ``LOOKALIKE_<FIELD NAME IN UPPER CASE>``; docs/CONFIG.md lists them.
    """

    home: Path = Path("var")
    """Root of the embedded setup; the database and artifacts default to live under it."""
    database_url: str = ""
    """SQLAlchemy URL. Empty means ``sqlite:///<home>/lookalike.db``."""
    artifacts_dir: Path | None = None
    """Media, model checkpoints and index directories. Empty means ``<home>/artifacts``."""
    artifact_store: str = ""
    """Where artifacts are shared between hosts: empty for the local ``artifacts_dir``, or
    ``s3://bucket/prefix`` (core/artifacts; docs/OPERATIONS.md "An object store")."""
    s3_endpoint_url: str = ""
    """S3 API endpoint (MinIO, SeaweedFS: ``http://host:port``); empty for AWS's own."""
    s3_region: str = ""
    s3_access_key_id: str = ""
    """Empty uses boto3's own chain (environment, ~/.aws, instance role)."""
    s3_secret_access_key: str = ""
    cache_dir: Path | None = None
    """This host's read-through cache of store objects. Empty means ``<home>/cache``."""
    cache_max_bytes: int = 20 * 1024**3
    """Bound of the cache; least recently used objects go first, never one in use."""

    broker_url: str = ""
    """Celery broker (Redis). Empty means the embedded mode: tasks run in-process."""
    result_backend: str = ""
    """Celery result backend. Empty means the same as the broker."""
    redis_url: str = ""
    """Redis for the "index changed" notification. Empty means the broker URL."""

    device: DeviceChoice = DeviceChoice.AUTO
    torch_threads: int = 0
    """Intra-op threads for torch on CPU; 0 leaves torch's default."""
    embed_batch_size: int = 64

    max_image_pixels: int = 40_000_000
    """Decompression-bomb guard: images with more pixels are rejected, not decoded."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest encoded image accepted by the media store and by uploads."""
    import_roots: tuple[Path, ...] = ()
    """Folders whose image files any catalog import may read, besides the catalog's own folder
    (core.media.ImportRoots; docs/CONFIG.md)."""

    annoy_trees: int = 50
    annoy_search_k: int = 10_000
    """Nodes Annoy inspects per query; -1 means Annoy's default (k * trees), too few for real data."""
    neighbour_list_k: int = 32
    """Precomputed nearest images per indexed image (core/index/neighbours.py); 0: build no lists.
    At least 2x the default k (10) in items, at the catalog's typical two photos per item."""
    neighbour_exact_limit: int = 200_000
    """Neighbour lists by exact search up to this many images, by Annoy above it."""
    neighbour_search_k: int = 100_000
    """Annoy search_k for neighbour lists above the exact limit (10x a query's: built once)."""
    serve_neighbour_lists: bool = True
    """Answer similar-by-id without filters from the served version's lists when it has them
    (service/searcher/listed.py); false always takes the Annoy path (comparisons, bench_api)."""
    serve_metadata_table: bool = True
    """Answer similar-by-id without filters from the lists plus the version's metadata table and the
    live set, with one SQL query (service/searcher/tabled.py); false reads result metadata from SQL."""
    keep_index_versions: int = 3
    verify_sample_size: int = 500
    min_verify_recall: float = 0.9
    fresh_rebuild_threshold: int = 1000
    """Queue a rebuild once the active index's fresh set holds more than this many images
    (docs/ARCHITECTURE.md, "The fresh set")."""

    duplicate_ratio: float = 5.0
    """Near-duplicate candidates: pairs of items closer than this x the median nearest-other-item
    distance under the active model; generous, the photo verification decides
    (docs/ARCHITECTURE.md, "Near-duplicate detection")."""
    duplicate_k: int = 20
    """Near-duplicate candidates per image from each source: the active index and the photo descriptors."""
    duplicate_min_similarity: float = 0.99
    """A candidate is a near duplicate when its photos' aligned band-pass correlation reaches this
    (core/signatures.py; docs/DECISIONS.md, "Near-duplicate verification")."""
    duplicate_search_k: int = 1000
    """Annoy search_k of the near-duplicate scan: a tenth of a search's, the same groups on
    Fashion-MNIST and 4x faster, so the 70k scan fits in a request (docs/BENCHMARKS.md)."""

    rerank: RerankMode = RerankMode.BOTH
    """Re-ranking of ``lookalike evaluate --queries --references`` (the index build and query path
    do not apply it yet: docs/DECISIONS.md, "Query-time re-ranking"; numbers in docs/BENCHMARKS.md,
    "Re-ranking")."""
    rerank_neighbours: int = 2
    """n: results (aQE) or catalog neighbours (DBA) averaged in. Small, because a product of a
    SKU-level catalog may have only a few photos: larger n pulls in other products."""
    rerank_alpha: float = 1.0
    """Neighbour weight = cosine ** alpha (0: plain average)."""

    promotion_margin: float = 0.01
    """A retrained model must beat the active one's MAP@R on the holdout by this much."""
    retrain_search: str = "default"
    """Recipe search of every retrain: ``default`` (trainer/search/default.yaml), a YAML
    file of the same form, or ``off`` (train the config as given)."""
    shadow_queries: int = 500
    """Shadow evaluation (worker/flows/shadow.py): the most recent logged queries replayed
    against the candidate and the active model before a promotion."""
    shadow_min_queries: int = 50
    """Fewer distinct logged query items than this: the shadow check is skipped (and says so)."""
    shadow_k: int = 10
    """Top-k of the shadow replay: overlap@k, and where feedback pairs must (not) rank."""
    shadow_min_overlap: float = 0.2
    """Mean top-k overlap (intersection / k) below which a candidate is "suspiciously different"."""
    shadow_low_overlap_gain: float = 0.05
    """A suspiciously different candidate is promoted only with at least this holdout MAP@R gain."""
    shadow_feedback_tolerance: float = 0.05
    """The candidate may rank at most this share of the feedback pairs fewer correctly than the active model."""
    query_log_sample_rate: float = 0.01
    """Share of similar-by-id requests whose query item, k and time are logged (0 disables)."""
    query_log_max_rows: int = 100_000
    """Bound of the query log: the oldest rows are deleted past it."""
    reindex_cron: str = "0 3 * * *"
    retrain_cron: str = "0 4 * * 0"
    job_heartbeat_seconds: float = 10.0
    """How often a worker running a job marks it alive (``jobs.updated_at``)."""
    orphaned_job_seconds: float = 120.0
    """A running job silent this long lost its worker: beat sends it again. 0 disables."""

    reads_public: bool = True
    """If false, read endpoints need an API key too."""
    admin_api_key: str = ""
    """A bootstrap key accepted for writes (hash it into the database with ``lookalike keys``)."""
    url_fetch_enabled: bool = False
    url_fetch_allowed_hosts: tuple[str, ...] = ()
    max_k: int = 100
    index_poll_seconds: float = 2.0
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of reverse proxies: only a request whose peer is one of
    them has its ``X-Forwarded-For`` / ``X-Forwarded-Proto`` believed (docs/OPERATIONS.md)."""
    proxy_client_header_timeout: int = 10
    """nginx (``lookalike proxy``): seconds a client may take to send the request headers."""
    proxy_client_body_timeout: int = 30
    """nginx: seconds a client may stay silent between two reads of its request body."""
    proxy_send_timeout: int = 30
    """nginx: seconds a client may stay silent between two writes of the response to it."""

    log_level: LogLevel = LogLevel.INFO
    """Level of the project's own loggers (DEBUG, INFO, WARNING, ERROR, CRITICAL); core/logs.py."""
    verbose: bool = False
    """Also the libraries' lines at ``log_level`` (Alembic's migration steps...); else only their warnings."""

    # ----------------------------------------------------------------- derived paths
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'lookalike.db').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.home / "artifacts").resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.home / "cache").resolve()

    @property
    def media_dir(self) -> Path:
        return self.resolved_artifacts_dir / "media"

    @property
    def models_dir(self) -> Path:
        return self.resolved_artifacts_dir / "models"

    @property
    def indexes_dir(self) -> Path:
        return self.resolved_artifacts_dir / "indexes"

    @property
    def shadow(self) -> ShadowRule:
        """The shadow-evaluation settings as one value (the promotion rule reads only these)."""
        return ShadowRule(queries=self.shadow_queries, min_queries=self.shadow_min_queries, k=self.shadow_k,
                          min_overlap=self.shadow_min_overlap, low_overlap_gain=self.shadow_low_overlap_gain,
                          feedback_tolerance=self.shadow_feedback_tolerance)

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or self.broker_url

    @property
    def max_request_bytes(self) -> int:
        """The largest request body any endpoint accepts: a reverse proxy's body limit.

        The endpoints' own caps are smaller or equal (each answers 413 itself past its
        own); a proxy in front must not refuse a body the API would take.
        """
        return max(IMPORT_MAX_BYTES, MAX_UPLOAD_IMAGES * self.max_image_bytes) + MULTIPART_OVERHEAD

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in self.trusted_proxies)

    @property
    def embedded(self) -> bool:
        """True when there is no broker: jobs run in the calling process."""
        return not self.broker_url

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``LOOKALIKE_*`` variables (from ``environ``, default ``os.environ``)."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in environ:
                values[f.name] = _parse(key, environ[key], hints[f.name])
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """``LOOKALIKE_*`` variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, enum.Enum):
                text = str(value.value)
            elif isinstance(value, tuple):
                text = ",".join(str(part) for part in value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[ENV_PREFIX + f.name.upper()] = text
        return env

    def __post_init__(self) -> None:
        for name in ("proxy_client_header_timeout", "proxy_client_body_timeout", "proxy_send_timeout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)} must be at least 1 (seconds)")
        if self.artifact_store and not self.artifact_store.startswith("s3://"):
            raise ConfigError(f"LOOKALIKE_ARTIFACT_STORE={self.artifact_store!r}: expected empty (the local "
                              "artifacts directory) or s3://bucket/prefix")
        if self.cache_max_bytes < 0:
            raise ConfigError(f"LOOKALIKE_CACHE_MAX_BYTES={self.cache_max_bytes} must be >= 0")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ConfigError(f"LOOKALIKE_TRUSTED_PROXIES: {entry!r} is not an IP address or network "
                                  "(CIDR)") from exc
        for name in ("shadow_queries", "shadow_min_queries", "shadow_k", "query_log_max_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)} must be at least 1")
        for name in ("query_log_sample_rate", "shadow_min_overlap", "shadow_feedback_tolerance"):
            if not 0 <= getattr(self, name) <= 1:  # also refuses NaN
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)} must be between 0 and 1")
        if self.rerank_neighbours < 1:
            raise ConfigError(f"LOOKALIKE_RERANK_NEIGHBOURS={self.rerank_neighbours} must be at least 1")
        if not self.rerank_alpha >= 0:  # also refuses NaN
            raise ConfigError(f"LOOKALIKE_RERANK_ALPHA={self.rerank_alpha} must be a number >= 0")
        if self.duplicate_k < 1:
            raise ConfigError(f"LOOKALIKE_DUPLICATE_K={self.duplicate_k} must be at least 1")
        if not -1.0 <= self.duplicate_min_similarity <= 1.0:  # also refuses NaN
            raise ConfigError(f"LOOKALIKE_DUPLICATE_MIN_SIMILARITY={self.duplicate_min_similarity} "
                              "must be a number in [-1, 1]")
        if 0 < self.orphaned_job_seconds <= 3 * self.job_heartbeat_seconds:
            raise ConfigError(
                f"LOOKALIKE_ORPHANED_JOB_SECONDS={self.orphaned_job_seconds} must be more than three "
                f"heartbeats (LOOKALIKE_JOB_HEARTBEAT_SECONDS={self.job_heartbeat_seconds}), "
                "or a slow heartbeat would look like a dead worker")


def _parse(key: str, raw: str, annotation: Any) -> Any:
    """Convert one environment string to the field's declared type."""
    target = annotation
    if get_origin(annotation) is not None and type(None) in get_args(annotation):
        target = next(a for a in get_args(annotation) if a is not type(None))
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(f"expected true/false, got {raw!r}")
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
        if target is Path:
            return Path(raw) if raw else None
        if isinstance(target, type) and issubclass(target, enum.Enum):
            choices = {member.value: member for member in target}
            if raw.strip().lower() not in choices:
                raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
            return choices[raw.strip().lower()]
        if get_origin(target) is tuple:
            parts = tuple(part.strip() for part in raw.split(",") if part.strip())
            return tuple(Path(part) for part in parts) if get_args(target)[0] is Path else parts
        return raw
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
