"""Publish: make an index version the served one, in one transaction, then announce it.

One commit flips everything a query depends on: the new index becomes ACTIVE, the
previous active index becomes READY (kept on disk for a rollback), READY versions
beyond ``keep_index_versions`` become RETIRED, and the index's model becomes the
active model. Readers see the old state or the new one, never a mix. Only after
the commit does the Redis notification go out (core/notify.py), on which every API
process hot-swaps (docs/ARCHITECTURE.md, "Hot swap").

A **rollback** is the same publish of an older READY version, after
:func:`check_republishable` has made sure its directory is intact and its model can
still be loaded (docs/OPERATIONS.md, "Upgrades and rollbacks"). It lives in core,
not in the worker, because the API calls it too (the service never imports worker
code, docs/DECISIONS.md).
"""

from __future__ import annotations

import enum
import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import CorruptVersion
from core.config import Settings
from core.db import IndexStatus, IndexVersion, session_scope
from core.db.types import utcnow
from core.index import IndexMismatchError, ManifestError, VectorIndex
from core.index_store import served_index_files, share_index_version
from core.notify import IndexChanged, publish_index_changed
from core.registry import RegistryError, activate_model_in, checkpoint_path, get_index, index_directory

log = logging.getLogger(__name__)

PUBLISHABLE = (IndexStatus.READY, IndexStatus.ACTIVE)
"""Statuses a version may be (re)published from: a complete build whose files are kept."""


class IndexNotFound(RegistryError):
    """No index version of that name."""


class Refusal(str, enum.Enum):
    """Why a version cannot be (re)published; the API's ``error.details.reason``."""

    NOT_READY = "not_ready"
    """Building, failed, or retired (its directory is deleted, or about to be)."""
    FILES_MISSING = "files_missing"
    FILES_CORRUPT = "files_corrupt"
    """A manifest that does not parse or match, or a file whose checksum differs."""
    MODEL_MISSING = "model_missing"
    """The checkpoint of the index's model is gone: queries could not be embedded."""


class IndexNotPublishable(RegistryError):
    """The version exists but cannot be served; ``reason`` says which check failed."""

    def __init__(self, version: str, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason


def publish_index(settings: Settings, sessions: sessionmaker[Session], version: str) -> IndexChanged:
    """Activate index ``version`` (READY, or already ACTIVE) and notify the API processes.

    With an object store, the version's files are uploaded first (core/index_store.py): a
    host that follows the publish can always fetch what it is told to serve. A store that
    is down fails the publish (StoreUnavailable) and the active index stays.
    """
    row = get_index(sessions, version)
    if row is not None and row.status in PUBLISHABLE:
        share_index_version(settings, row)
    with session_scope(sessions) as s:
        index = s.scalar(select(IndexVersion).where(IndexVersion.version == version).with_for_update())
        if index is None:
            raise IndexNotFound(f"index version {version!r} does not exist")
        if index.status not in PUBLISHABLE:
            raise _not_ready(index)
        for previous in s.scalars(select(IndexVersion).where(
            IndexVersion.status == IndexStatus.ACTIVE, IndexVersion.id != index.id
        ).with_for_update()):
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


def retire_beyond_keep(s: Session, keep: int) -> list[str]:
    """Mark RETIRED the READY versions beyond the ``keep - 1`` most recently served; their names.

    ``keep`` (``keep_index_versions``) counts the active index too. "Most recently
    served" orders by the last publish, else the build time, so a version that was
    rolled back to stays a rollback target after the next publish even when newer
    builds exist: those are the ones that were rolled back *from*. The update is
    conditional on the row still being READY: a rollback that published one of them
    meanwhile (it holds the row's lock) wins, and its directory is not deleted.
    Publish calls this in its transaction and RETIRE_OLD_INDEXES before deleting
    (worker/flows/retire.py), so the two never disagree.
    """
    ready = s.execute(
        select(IndexVersion.id, IndexVersion.version).where(IndexVersion.status == IndexStatus.READY)
        .order_by(func.coalesce(IndexVersion.published_at, IndexVersion.created_at).desc(),
                  IndexVersion.id.desc())
    ).all()
    surplus = ready[max(keep - 1, 0):]
    if surplus:
        s.execute(update(IndexVersion)
                  .where(IndexVersion.id.in_([row.id for row in surplus]),
                         IndexVersion.status == IndexStatus.READY)
                  .values(status=IndexStatus.RETIRED))
    return [row.version for row in surplus]


def check_republishable(settings: Settings, sessions: sessionmaker[Session], version: str) -> IndexVersion:
    """The row of ``version`` if it can be served again, else why not.

    IndexNotFound when there is no such version; IndexNotPublishable when it is not
    READY/ACTIVE, when its directory, manifest or files are missing or fail their
    checksums (every byte is read: a rollback must not swap in a damaged index), or
    when its model's checkpoint is gone. A model that was merely superseded (status
    ``retired``, what every activation does to the previous one) is fine: publishing
    makes it active again.
    """
    row = get_index(sessions, version)
    if row is None:
        raise IndexNotFound(f"index version {version!r} does not exist")
    if row.status not in PUBLISHABLE:
        raise _not_ready(row)
    directory = index_directory(settings, row)
    try:
        directory, pinned = served_index_files(settings, row)  # with a store: fetched, checked by its file list
        try:
            VectorIndex.load(directory, expected_model_version=row.model.version, verify_checksum=True).close()
        finally:
            if pinned is not None:
                pinned.close()
    except CorruptVersion as exc:
        raise IndexNotPublishable(version, Refusal.FILES_CORRUPT,
                                  f"index {version} cannot be published: {exc}") from exc
    except (FileNotFoundError, IndexMismatchError, ManifestError) as exc:
        reason = Refusal.FILES_MISSING if isinstance(exc, FileNotFoundError) else Refusal.FILES_CORRUPT
        # the API returns this message: name the version's directory, not where it lives on the server
        detail = str(exc).replace(str(directory), f"<indexes>/{directory.name}")
        raise IndexNotPublishable(version, reason, f"index {version} cannot be published: {detail}") from exc
    checkpoint = checkpoint_path(settings, row.model.checkpoint_path, row.model.version)
    if not checkpoint.is_file():
        raise IndexNotPublishable(version, Refusal.MODEL_MISSING,
                                  f"index {version} cannot be published: the checkpoint of its model "
                                  f"{row.model.version} is gone ({checkpoint.name})")
    return row


def republish_index(settings: Settings, sessions: sessionmaker[Session], version: str) -> IndexChanged:
    """Roll back (or forward) to an existing version: check it, then publish it as a build would.

    The checks run outside the publish transaction (they read files); publish then
    re-checks the status under a row lock, so a version that retention retired in
    between is refused rather than served from a directory being deleted.
    """
    check_republishable(settings, sessions, version)
    return publish_index(settings, sessions, version)


def _not_ready(index: IndexVersion) -> IndexNotPublishable:
    why = {IndexStatus.RETIRED: "its files are deleted by retention (keep_index_versions)",
           IndexStatus.FAILED: "its build failed",
           IndexStatus.BUILDING: "it is still being built"}.get(index.status, "")
    return IndexNotPublishable(index.version, Refusal.NOT_READY,
                               f"index {index.version} is {index.status.value}: {why}; "
                               "only a ready index can be published")
