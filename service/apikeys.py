"""API keys in SQL: created once (shown once), stored only as a SHA-256 hash, revocable.

A key looks like ``lk_<8 chars>_<43 chars>``; the ``lk_<8 chars>`` part is kept in
clear as ``prefix`` so that an operator can tell keys apart in ``lookalike keys
list`` without the table ever holding a usable secret. Keys are long random
tokens, so a plain (unsalted) SHA-256 is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.db import ApiKey, session_scope
from core.db.types import utcnow

KEY_PREFIX = "lk_"


class ApiKeyError(ValueError):
    """A key name is taken or unknown."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(name=row.name, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at)


def create_key(sessions: sessionmaker[Session], name: str) -> tuple[str, KeyInfo]:
    """Create a key called ``name``; return the plaintext (shown once) and its record."""
    name = name.strip()
    if not name or len(name) > 255:
        raise ApiKeyError("a key name must be 1 to 255 characters")
    public = secrets.token_urlsafe(6)[:8]
    key = f"{KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, prefix=f"{KEY_PREFIX}{public}", key_hash=hash_key(key))
    try:
        with session_scope(sessions) as s:
            s.add(row)
    except IntegrityError as exc:
        raise ApiKeyError(f"a key named {name!r} already exists") from exc
    return key, _info(row)


def list_keys(sessions: sessionmaker[Session]) -> list[KeyInfo]:
    with session_scope(sessions) as s:
        return [_info(row) for row in s.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke_key(sessions: sessionmaker[Session], name: str) -> KeyInfo:
    """Revoke the key called ``name`` (idempotent); it stops working within the cache TTL."""
    with session_scope(sessions) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise ApiKeyError(f"no key named {name!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return _info(row)


def key_is_valid(sessions: sessionmaker[Session], key: str) -> bool:
    """True if ``key`` hashes to a stored, unrevoked key."""
    if not key.startswith(KEY_PREFIX):
        return False
    with session_scope(sessions) as s:
        found = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key),
                                                 ApiKey.revoked_at.is_(None)))
    return found is not None
