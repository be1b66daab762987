"""Signatures in the ``image_signatures`` table: read what is stored, compute and store the rest.

One row per photo content (``media_key``), so a second near-duplicate scan decodes
nothing and every host of a shared setup reuses the first one's work. A row made with
another :data:`core.signatures.SIGNATURE_VERSION` is recomputed and overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.db import ImageSignature, session_scope
from core.db.backend import Backend, backend_of
from core.db.types import utcnow
from core.media import MediaError, MediaStore
from core.signatures import SIGNATURE_VERSION, SIZE, thumbnail

_CHUNK = 900
"""Keys per ``IN (...)`` clause and per insert: under SQLite's bound-parameter limit."""


def _stored(session: Session, keys: Sequence[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for s in range(0, len(keys), _CHUNK):
        rows = session.execute(select(ImageSignature.media_key, ImageSignature.thumbnail)
                               .where(ImageSignature.media_key.in_(keys[s:s + _CHUNK]),
                                      ImageSignature.version == SIGNATURE_VERSION)).all()
        found.update((r.media_key, r.thumbnail) for r in rows)
    return found


def _put(session: Session, rows: dict[str, bytes]) -> None:
    items = list(rows.items())
    dialect = postgresql if backend_of(session) is Backend.POSTGRESQL else sqlite
    now = utcnow()
    for s in range(0, len(items), _CHUNK):
        stmt = dialect.insert(ImageSignature)
        # a concurrent scan may have stored the same content: same bytes, same signature
        stmt = stmt.on_conflict_do_update(index_elements=[ImageSignature.media_key],
                                          set_={"version": stmt.excluded.version,
                                                "thumbnail": stmt.excluded.thumbnail,
                                                "created_at": stmt.excluded.created_at})
        session.execute(stmt, [{"media_key": k, "version": SIGNATURE_VERSION, "thumbnail": t, "created_at": now}
                               for k, t in items[s:s + _CHUNK]])


def load_signatures(sessions: sessionmaker[Session], store: MediaStore,
                    media_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Thumbnails of ``media_keys`` (uint8 ``[n, SIZE, SIZE]``), which are valid, and how many were computed.

    A photo that is missing from the media store or no longer decodes has no
    signature (``valid`` False, its thumbnail zeros): it cannot be verified, so it is
    never reported as a near duplicate.
    """
    keys = sorted(set(media_keys))
    with session_scope(sessions) as session:
        stored = _stored(session, keys)
    computed: dict[str, bytes] = {}
    for key in keys:
        if key in stored:
            continue
        try:
            computed[key] = thumbnail(store.open(key)).tobytes()
        except (MediaError, OSError):
            continue
    if computed:
        with session_scope(sessions) as session:
            _put(session, computed)
    stored.update(computed)
    thumbs = np.zeros((len(media_keys), SIZE, SIZE), np.uint8)
    valid = np.zeros(len(media_keys), bool)
    for row, key in enumerate(media_keys):
        blob = stored.get(key)
        if blob is not None and len(blob) == SIZE * SIZE:
            thumbs[row] = np.frombuffer(blob, np.uint8).reshape(SIZE, SIZE)
            valid[row] = True
    return thumbs, valid, len(computed)
