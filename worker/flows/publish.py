"""Publish: make a READY index the served one, in one transaction, then announce it.

One commit flips everything a query depends on: the new index becomes ACTIVE, the
previous active index becomes READY (kept on disk for a rollback), READY versions
beyond ``keep_index_versions`` become RETIRED, and the index's model becomes the
active model. Readers see the old state or the new one, never a mix. Only after
the commit does the Redis notification go out.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import IndexStatus, IndexVersion, session_scope
from core.db.types import utcnow
from core.notify import IndexChanged, publish_index_changed
from core.registry import RegistryError, activate_model_in
from worker.flows.errors import FlowError
from worker.flows.retire import retire_beyond_keep

log = logging.getLogger(__name__)


class PublishError(FlowError):
    pass


def publish_index(settings: Settings, sessions: sessionmaker[Session], version: str) -> IndexChanged:
    """Activate index ``version`` (READY, or a previous version for a rollback) and notify."""
    with session_scope(sessions) as s:
        index = s.scalar(select(IndexVersion).where(IndexVersion.version == version).with_for_update())
        if index is None:
            raise RegistryError(f"index version {version!r} does not exist")
        if index.status not in (IndexStatus.READY, IndexStatus.ACTIVE):
            raise PublishError(f"index {version} is {index.status.value}; only a ready index can be published")
        for previous in s.scalars(select(IndexVersion).where(
            IndexVersion.status == IndexStatus.ACTIVE, IndexVersion.id != index.id
        )):
            previous.status = IndexStatus.READY
        index.status = IndexStatus.ACTIVE
        index.published_at = utcnow()
        model = activate_model_in(s, index.model.version)
        s.flush()
        retire_beyond_keep(s, settings.keep_index_versions)
        message = IndexChanged(index_version=index.version, model_version=model.version)
    listeners = publish_index_changed(settings, message)
    log.info("published index %s (model %s); %d listener(s) notified",
             message.index_version, message.model_version, listeners)
    return message
