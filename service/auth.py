"""Who may call what: keys on every write/admin endpoint, on reads when configured.

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Valid keys
are cached per process for :data:`CACHE_SECONDS` so that keyed reads do not cost a
database round trip each; a revoked key therefore stops working within that time.
``settings.admin_api_key`` (a bootstrap secret from the environment) is accepted too,
compared in constant time.
"""

from __future__ import annotations

import enum
import functools
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, request
from sqlalchemy.orm import Session, sessionmaker

from service.apikeys import hash_key, key_is_valid
from service.errors import ApiError, ErrorCode

CACHE_SECONDS = 10.0
_EXTENSION = "lookalike.keys"
F = TypeVar("F", bound=Callable[..., Any])


class Access(str, enum.Enum):
    READ = "read"
    WRITE = "write"


class KeyChecker:
    """Validates presented keys against SQL (with a short positive cache) and the bootstrap key."""

    def __init__(self, sessions: sessionmaker[Session], *, admin_key: str, reads_public: bool) -> None:
        self._sessions = sessions
        self._admin_key = admin_key
        self.reads_public = reads_public
        self._valid_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_valid(self, key: str) -> bool:
        if self._admin_key and hmac.compare_digest(key.encode(), self._admin_key.encode()):
            return True
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            if self._valid_until.get(digest, 0.0) > now:
                return True
        if not key_is_valid(self._sessions, key):
            return False
        with self._lock:
            if len(self._valid_until) > 10_000:  # bound the cache; valid keys are few
                self._valid_until.clear()
            self._valid_until[digest] = now + CACHE_SECONDS
        return True

    def check(self, access: Access) -> None:
        """Raise a 401 ApiError unless the current request may have ``access``."""
        if access is Access.READ and self.reads_public:
            return
        key = presented_key()
        if key is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED,
                           "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           headers={"WWW-Authenticate": 'Bearer realm="lookalike"'})
        if not self.is_valid(key):
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "the API key is unknown or revoked",
                           headers={"WWW-Authenticate": 'Bearer realm="lookalike", error="invalid_token"'})


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def request_has_valid_key() -> bool:
    """Whether the current request presents a valid key, whatever the endpoint needs.

    Public reads accept requests without one; what they show may still depend on it
    (server paths, :mod:`service.redact`).
    """
    key = presented_key()
    return key is not None and key_checker().is_valid(key)


def requires(access: Access) -> Callable[[F], F]:
    """Decorate a view so that it checks ``access`` before running."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key_checker().check(access)
            return view(*args, **kwargs)

        wrapper.required_access = access  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def init_auth(app: Flask, checker: KeyChecker) -> None:
    app.extensions[_EXTENSION] = checker


def key_checker() -> KeyChecker:
    """The checker of the current app."""
    return current_app.extensions[_EXTENSION]
