"""SQL models and sessions (SQLAlchemy 2.x)."""

from core.db.models import (
    ApiKey,
    Base,
    Embedding,
    Feedback,
    FeedbackJudgement,
    FeedbackSource,
    ImageSignature,
    ImageStatus,
    IndexStatus,
    IndexVersion,
    Item,
    ItemImage,
    ItemStatus,
    Job,
    JobKind,
    JobPhase,
    JobStatus,
    ModelStatus,
    ModelVersion,
    QueryLog,
)
from core.db.session import make_engine, make_session_factory, session_scope

__all__ = [
    "ApiKey", "Base", "Embedding", "ImageSignature", "Feedback", "FeedbackJudgement", "FeedbackSource",
    "ImageStatus", "IndexStatus", "IndexVersion", "Item",
    "ItemImage", "ItemStatus", "Job", "JobKind", "JobPhase", "JobStatus", "ModelStatus", "ModelVersion",
    "QueryLog",
    "make_engine", "make_session_factory", "session_scope",
]
