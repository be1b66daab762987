"""The tables (docs/ARCHITECTURE.md, "Data model") as SQLAlchemy 2.x typed models."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.db.types import JSONType, UTCDateTime, enum_column, utcnow

# Explicit constraint names so Alembic migrations are identical on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONType}


class ItemStatus(str, enum.Enum):
    ACTIVE = "active"
    DELETED = "deleted"


class ImageStatus(str, enum.Enum):
    ACTIVE = "active"
    REMOVED = "removed"


class ModelStatus(str, enum.Enum):
    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"


class IndexStatus(str, enum.Enum):
    BUILDING = "building"
    READY = "ready"
    ACTIVE = "active"
    FAILED = "failed"
    RETIRED = "retired"


class JobKind(str, enum.Enum):
    IMPORT = "import"
    EMBED = "embed"
    REINDEX = "reindex"
    TRAIN = "train"
    RETRAIN = "retrain"
    DUPLICATES = "duplicates"
    """A near-duplicate scan (core/duplicate_scans.py); its result is the report."""


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class JobPhase(str, enum.Enum):
    """What a multi-step job is doing now; ``progress`` counts within the phase."""

    NONE = ""  # a one-step job (import, embed), or not started
    EMBEDDING = "embedding"
    BUILDING = "building"
    VERIFYING = "verifying"
    PUBLISHING = "publishing"
    SIGNATURES = "signatures"  # a near-duplicate scan reading its photos' signatures
    CANDIDATES = "candidates"  # ... finding its candidate pairs (then VERIFYING them)


class FeedbackJudgement(str, enum.Enum):
    """A judgement on a (query item, result item) pair, with the pairs-CSV label ``y``."""

    SIMILAR = "similar"  # y = 0
    DISSIMILAR = "dissimilar"  # y = 1

    @property
    def y(self) -> int:
        """The Siamese label of the source notes (trainer/data/tuples.py): 0 similar, 1 dissimilar."""
        return 0 if self is FeedbackJudgement.SIMILAR else 1


class FeedbackSource(str, enum.Enum):
    """Who made a judgement: a merchandiser's explicit mark, or a shopper's click or skip."""

    MERCHANDISER = "merchandiser"
    CLICK = "click"
    SKIP = "skip"


class Item(Base):
    """A catalog product, addressed by the shop's external id (SKU)."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    title: Mapped[str] = mapped_column(String(1000), default="")
    category: Mapped[str | None] = mapped_column(String(255), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    group_key: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[ItemStatus] = mapped_column(
        enum_column(ItemStatus), default=ItemStatus.ACTIVE, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    """Indexed: the searcher's live set probes ``max(updated_at)`` per request (service/searcher/live.py)."""

    images: Mapped[list[ItemImage]] = relationship(
        back_populates="item", order_by="ItemImage.position", cascade="all, delete-orphan"
    )


class ItemImage(Base):
    """One photo of an item; the bytes live in the media store under ``media_key``."""

    __tablename__ = "item_images"
    __table_args__ = (UniqueConstraint("item_id", "media_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    source_uri: Mapped[str] = mapped_column(String(2000), default="")
    media_key: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    status: Mapped[ImageStatus] = mapped_column(
        enum_column(ImageStatus), default=ImageStatus.ACTIVE, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    """Indexed for the same per-request probe as :attr:`Item.updated_at`."""

    item: Mapped[Item] = relationship(back_populates="images")


class ModelVersion(Base):
    """A trained embedding model: its spec, where its checkpoint is, how good it is."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column()
    checkpoint_path: Mapped[str] = mapped_column(String(2000))
    train_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[ModelStatus] = mapped_column(
        enum_column(ModelStatus), default=ModelStatus.CANDIDATE, index=True
    )
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[dt.datetime | None] = mapped_column()


class Embedding(Base):
    """A cached vector for (image, model), so rebuilding with the same model recomputes nothing."""

    __tablename__ = "embeddings"

    image_id: Mapped[int] = mapped_column(
        ForeignKey("item_images.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class ImageSignature(Base):
    """A photo's near-duplicate signature (core/signatures.py), keyed by its content, so it is computed once.

    Keyed by ``media_key`` (the content hash), not by image id: the same bytes always
    give the same signature, on every host; ``version`` is the signature definition
    it was made with (a row of another version is recomputed).
    """

    __tablename__ = "image_signatures"

    media_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    thumbnail: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IndexVersion(Base):
    """A built Annoy index directory and its life cycle (building -> ready -> active -> retired)."""

    __tablename__ = "indexes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    path: Mapped[str] = mapped_column(String(2000), default="")
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[IndexStatus] = mapped_column(
        enum_column(IndexStatus), default=IndexStatus.BUILDING, index=True
    )
    n_trees: Mapped[int] = mapped_column(Integer, default=0)
    build_seconds: Mapped[float | None] = mapped_column(Float)
    self_recall: Mapped[float | None] = mapped_column(Float)
    max_embedding_created_at: Mapped[dt.datetime | None] = mapped_column()
    """Newest embedding included: anything newer belongs to the fresh set."""
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column()

    model: Mapped[ModelVersion] = relationship()


class Job(Base):
    """Every long operation, with progress that the CLI, the API and the UI show."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_kind_status", "kind", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(enum_column(JobKind))
    status: Mapped[JobStatus] = mapped_column(
        enum_column(JobStatus), default=JobStatus.QUEUED, index=True
    )
    progress_done: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_total: Mapped[int] = mapped_column(BigInteger, default=0)
    phase: Mapped[JobPhase] = mapped_column(enum_column(JobPhase), default=JobPhase.NONE, server_default="")
    celery_task_id: Mapped[str | None] = mapped_column(String(255))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key, stored as a SHA-256 hash; only its short prefix is kept in clear."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()


class Feedback(Base):
    """A judgement on a (query item, result item) pair; one row per (query, result, source).

    Recording the same pair from the same source again updates the judgement and weight
    (docs/ARCHITECTURE.md, "Feedback"). The unique index serves the query-time lookup of
    a query item's marks (its leading column is ``query_item_id``).
    """

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("query_item_id", "result_item_id", "source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    query_item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    result_item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    judgement: Mapped[FeedbackJudgement] = mapped_column(enum_column(FeedbackJudgement))
    source: Mapped[FeedbackSource] = mapped_column(enum_column(FeedbackSource))
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class QueryLog(Base):
    """A sampled similar-by-id request: the query item, its k, when (core/query_log.py).

    The item is kept by external id, not by foreign key: the hot path inserts without a
    lookup, and a replay simply skips ids that no longer name an active item. Bounded by
    deleting the oldest rows (the primary key is the age order).
    """

    __tablename__ = "query_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255))
    k: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
