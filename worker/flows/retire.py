"""Retire old index versions: keep the newest N on disk, delete the rest.

Publish already decides which versions are RETIRED (in its transaction); this
removes their directories, and those of FAILED builds, plus temporary build
directories that a killed build left behind. A directory is first renamed to a
hidden trash name and only then deleted, so a half-deleted directory never sits
under a version's name. API processes that still have a retired index memory-
mapped keep reading it: unlinked files live until their last mapping goes.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import IndexStatus, IndexVersion, session_scope
from core.index_store import delete_shared_versions
from core.publish import retire_beyond_keep

log = logging.getLogger(__name__)

ORPHAN_MIN_AGE_SECONDS = 6 * 3600
"""A hidden build directory older than this belongs to no live build (they take minutes)."""


def retire_old_indexes(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """RETIRE_OLD_INDEXES: enforce ``keep_index_versions`` and delete unneeded directories."""
    with session_scope(sessions) as s:
        retire_beyond_keep(s, settings.keep_index_versions)  # the rule publish applies (core/publish.py)
        doomed = s.execute(select(IndexVersion.version, IndexVersion.path).where(
            IndexVersion.status.in_([IndexStatus.RETIRED, IndexStatus.FAILED]))).all()
    removed = [str(p) for _, p in doomed if p and remove_index_dir(Path(p))]
    removed += delete_shared_versions(settings, [version for version, _ in doomed])  # with an object store
    removed += _remove_orphans(settings.indexes_dir)
    if removed:
        log.info("removed %d old index directories", len(removed))
    return {"removed": removed}


def remove_index_dir(path: Path) -> bool:
    """Rename a version directory to a hidden trash name, then delete it; False if absent."""
    if not path.is_dir():
        return False
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:  # a concurrent retire got there first
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_orphans(root: Path) -> list[str]:
    """Leftover hidden build/trash directories (a build or a delete killed half way)."""
    if not root.is_dir():
        return []
    removed = []
    cutoff = time.time() - ORPHAN_MIN_AGE_SECONDS
    for entry in root.iterdir():
        if not entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name.startswith(".trash-") or entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed
