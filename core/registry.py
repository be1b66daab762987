"""Model and index versions in SQL: what exists, which is active.

The SQL side of the model registry lives here (not in ``trainer``) because the
service and the worker need it too and must not import training code. Training
registers through these functions; the worker's publish flips the active index.

"Active model" is the model the next reindex embeds with; queries always use the
model recorded with the *active index*, so the two can differ for the short time
between activating a model and publishing its index without breaking anything.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload, sessionmaker

from core.artifacts import ArtifactExists, open_cache, open_store
from core.config import Settings
from core.db import IndexStatus, IndexVersion, ModelStatus, ModelVersion, session_scope
from core.db.types import utcnow


class RegistryError(LookupError):
    """An unknown version, or an operation the version's state does not allow."""


def new_version(prefix: str) -> str:
    """A sortable, unique version name such as ``m-20261124T201500-3fa2``."""
    return f"{prefix}-{utcnow().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


def register_model(
    sessions: sessionmaker[Session],
    *,
    checkpoint_path: Path,
    spec: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
    notes: str = "",
) -> str:
    """Record a trained model as a candidate and return its version name."""
    version = version or new_version("m")
    with session_scope(sessions) as s:
        s.add(ModelVersion(
            version=version, spec=spec, checkpoint_path=str(checkpoint_path),
            train_config=train_config or {}, metrics=metrics or {},
            status=ModelStatus.CANDIDATE, notes=notes,
        ))
    return version


def list_models(sessions: sessionmaker[Session]) -> list[ModelVersion]:
    with session_scope(sessions) as s:
        return list(s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def model_row(s: Session, version: str) -> ModelVersion:
    """The registry row of ``version`` inside an open transaction; RegistryError if there is none."""
    model = s.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if model is None:
        raise RegistryError(f"model version {version!r} does not exist")
    return model


def get_model(sessions: sessionmaker[Session], version: str) -> ModelVersion:
    with session_scope(sessions) as s:
        return model_row(s, version)


def active_model(sessions: sessionmaker[Session]) -> ModelVersion | None:
    with session_scope(sessions) as s:
        return s.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE))


def activate_model_in(s: Session, version: str) -> ModelVersion:
    """Make ``version`` the one active model inside an open transaction."""
    model = model_row(s, version)
    s.execute(
        update(ModelVersion)
        .where(ModelVersion.status == ModelStatus.ACTIVE, ModelVersion.id != model.id)
        .values(status=ModelStatus.RETIRED)
    )
    if model.status is not ModelStatus.ACTIVE:
        model.status = ModelStatus.ACTIVE
        model.activated_at = utcnow()
    return model


def activate_model(sessions: sessionmaker[Session], version: str) -> None:
    with session_scope(sessions) as s:
        activate_model_in(s, version)


def set_model_metrics(sessions: sessionmaker[Session], version: str, metrics: dict[str, Any]) -> None:
    with session_scope(sessions) as s:
        model = model_row(s, version)
        model.metrics = {**model.metrics, **metrics}


def active_index_row(s: Session) -> IndexVersion | None:
    """The index being served, with its model loaded, inside an open transaction (None before
    the first publish)."""
    return s.scalar(
        select(IndexVersion)
        .options(joinedload(IndexVersion.model))
        .where(IndexVersion.status == IndexStatus.ACTIVE)
    )


def active_index(sessions: sessionmaker[Session]) -> IndexVersion | None:
    """The index being served, with its model loaded (None before the first publish)."""
    with session_scope(sessions) as s:
        return active_index_row(s)


def get_index(sessions: sessionmaker[Session], version: str) -> IndexVersion | None:
    """Index version ``version`` with its model loaded, or None if there is none."""
    with session_scope(sessions) as s:
        return s.scalar(select(IndexVersion).options(joinedload(IndexVersion.model))
                        .where(IndexVersion.version == version))


def list_indexes(sessions: sessionmaker[Session], limit: int = 50) -> list[IndexVersion]:
    with session_scope(sessions) as s:
        return list(s.scalars(
            select(IndexVersion).options(joinedload(IndexVersion.model))
            .order_by(IndexVersion.id.desc()).limit(limit)
        ))


def index_directory(settings: Settings, row: IndexVersion) -> Path:
    """Where the files of index version ``row`` live: its recorded path, else ``indexes/<version>``."""
    return Path(row.path) if row.path else settings.indexes_dir / row.version


MODELS_PREFIX = "models/"
"""Where checkpoints live in the artifact store (core/artifacts): ``models/<version>.pt``."""


def checkpoint_key(model_version: str) -> str:
    return f"{MODELS_PREFIX}{model_version}.pt"


def share_checkpoint(settings: Settings, model_version: str, path: Path) -> None:
    """Upload a new model's checkpoint to the object store, if one is configured.

    Called before the model's row is written, so no host ever sees a model whose
    checkpoint it cannot fetch. An existing key (a retried registration) is kept as is.
    """
    if not settings.artifact_store:
        return
    try:
        open_store(settings).put_file(checkpoint_key(model_version), path)
    except ArtifactExists:
        pass


def checkpoint_path(settings: Settings, checkpoint: str, model_version: str) -> Path:
    """A local file with the model's checkpoint: the recorded path, the conventional
    ``models/<version>.pt``, or (with an object store) this host's cached copy, fetched once."""
    recorded = Path(checkpoint) if checkpoint else None
    if recorded is not None and recorded.is_absolute() and recorded.exists():
        return recorded
    if recorded is not None and not recorded.is_absolute() and (settings.models_dir / recorded).exists():
        return settings.models_dir / recorded
    conventional = settings.models_dir / f"{model_version}.pt"
    if conventional.exists() or not settings.artifact_store:
        return conventional
    # The caller loads it at once; the pin ends here (a checkpoint is read whole into memory).
    with open_cache(settings).fetch(checkpoint_key(model_version)) as cached:
        return cached.path


def model_to_dict(model: ModelVersion) -> dict[str, Any]:
    return {
        "version": model.version,
        "status": model.status.value,
        "spec": model.spec,
        "metrics": model.metrics,
        "train_config": model.train_config,
        "checkpoint_path": model.checkpoint_path,
        "notes": model.notes,
        "created_at": model.created_at.isoformat(),
        "activated_at": model.activated_at.isoformat() if model.activated_at else None,
    }


def index_to_dict(index: IndexVersion) -> dict[str, Any]:
    return {
        "version": index.version,
        "status": index.status.value,
        "model_version": index.model.version if index.model else None,
        "item_count": index.item_count,
        "image_count": index.image_count,
        "n_trees": index.n_trees,
        "build_seconds": index.build_seconds,
        "self_recall": index.self_recall,
        "error": index.error or None,
        "created_at": index.created_at.isoformat(),
        "published_at": index.published_at.isoformat() if index.published_at else None,
    }
