"""Which model a flow embeds with.

Queries are embedded with the model of the *active index*; the next reindex uses
the *active model*. Between a model promotion and the publish of its index the two
differ, and new images must be embedded with both so that they are findable now
(query model) and need no work at the next build (active model).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import ModelStatus, ModelVersion, session_scope
from core.registry import active_index, active_model, get_model
from worker.flows.failures import FlowError


class NoActiveModel(FlowError):
    """No model is active; the message names the step that is actually missing."""

    def __init__(self, candidates: Sequence[str] = ()) -> None:
        if candidates:  # trained or initialised, never activated
            shown = ", ".join(candidates[:3]) + (" ..." if len(candidates) > 3 else "")
            super().__init__(f"no active model: activate one with `lookalike models activate VERSION` "
                             f"(registered, not active: {shown})")
        else:
            super().__init__("no model yet: run `lookalike train --activate` or `lookalike models init`")


def no_active_model(sessions: sessionmaker[Session]) -> NoActiveModel:
    """The error for "no active model", listing the newest candidates a user could activate."""
    with session_scope(sessions) as s:
        versions = s.scalars(select(ModelVersion.version).where(ModelVersion.status == ModelStatus.CANDIDATE)
                             .order_by(ModelVersion.id.desc())).all()
    return NoActiveModel(list(versions))


def reindex_model(sessions: sessionmaker[Session], version: str | None = None) -> ModelVersion:
    """The model a reindex builds with: ``version`` if given, else the active model."""
    if version is not None:
        return get_model(sessions, version)
    model = active_model(sessions)
    if model is None:
        raise no_active_model(sessions)
    return model


def target_models(sessions: sessionmaker[Session]) -> list[ModelVersion]:
    """Models new images are embedded with: the query model first, then the active one."""
    index = active_index(sessions)
    query_model = index.model if index is not None else None
    models = [m for m in (query_model, active_model(sessions)) if m is not None]
    if not models:
        raise no_active_model(sessions)
    if len(models) == 2 and models[0].id == models[1].id:
        models.pop()
    return models
