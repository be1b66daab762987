"""Hot swap: follow the active index and the fresh set, and swap the served state.

One daemon thread per process wakes on a Redis "index changed" message or every
``settings.index_poll_seconds`` (the polling fallback, and what keeps the fresh
set current), asks SQL which index is active, and if it changed builds a complete
new :class:`SearchState` *before* replacing the one reference that requests read.
A request that started earlier keeps its own reference, so nothing in flight ever
sees a half-loaded index. A version that fails to load is logged, counted, and
retried after :data:`RETRY_FAILED_SECONDS`; the old one keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.registry import active_index
from service.metrics import Metrics
from service.searcher.state import SearchState, build_state, refresh_fresh

log = logging.getLogger(__name__)

RETRY_FAILED_SECONDS = 30.0
REDIS_RETRY_SECONDS = 15.0


class Listener(Protocol):
    def wait(self, timeout: float) -> object | None: ...
    def close(self) -> None: ...


class StateHolder:
    """The current state and how to bring it up to date (thread-safe, reads lock-free)."""

    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session],
                 metrics: Metrics) -> None:
        self.settings = settings
        self._engine = engine
        self._sessions = sessions
        self._metrics = metrics
        self.state: SearchState | None = None
        self.last_error: str = ""
        self.active_in_db: str | None = None
        self._refresh_lock = threading.Lock()
        self._failed: dict[str, float] = {}

    def refresh(self) -> SearchState | None:
        """Swap to the active index if it changed, else update the fresh set."""
        with self._refresh_lock:
            row = active_index(self._sessions)
            self.active_in_db = row.version if row is not None else None
            current = self.state
            if row is None:
                return current  # nothing published (or unpublished): keep what we have
            if current is None or row.version != current.index_version:
                return self._swap_to(row)
            updated = refresh_fresh(self._engine, current)
            if updated is not current:
                self.state = updated
                self._metrics.fresh_set.set(len(updated.fresh))
            return updated

    def _swap_to(self, row) -> SearchState | None:  # type: ignore[no-untyped-def]
        failed_at = self._failed.get(row.version)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_SECONDS:
            return self.state
        try:
            new = build_state(self.settings, self._engine, row)
        except Exception as exc:  # noqa: BLE001 - keep serving the old index, say why loudly
            self._failed[row.version] = time.monotonic()
            self.last_error = f"index {row.version} could not be loaded: {exc}"
            self._metrics.swap_failures.inc()
            log.error("%s", self.last_error)
            return self.state
        old = self.state
        self.state = new  # the swap: one reference assignment
        self._failed.pop(row.version, None)
        self.last_error = ""
        self._metrics.swaps.inc()
        self._metrics.show_index(new.index_version, new.model_version, len(new.index))
        self._metrics.fresh_set.set(len(new.fresh))
        log.info("now serving index %s (was %s)", new.index_version, old.index_version if old else "none")
        return new


class Watcher:
    """The background thread that keeps a :class:`StateHolder` current."""

    def __init__(self, holder: StateHolder, *, poll_seconds: float,
                 listener_factory: Callable[[], Listener] | None) -> None:
        self._holder = holder
        self._poll = max(0.05, poll_seconds)
        self._listener_factory = listener_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="index-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        listener: Listener | None = None
        next_connect = 0.0
        while not self._stop.is_set():
            if listener is None and self._listener_factory is not None and time.monotonic() >= next_connect:
                try:
                    listener = self._listener_factory()
                except Exception as exc:  # noqa: BLE001 - Redis down: poll until it is back
                    log.warning("index notifications unavailable (%s); polling every %.1fs", exc, self._poll)
                    next_connect = time.monotonic() + REDIS_RETRY_SECONDS
            if listener is not None:
                try:
                    listener.wait(self._poll)
                except Exception as exc:  # noqa: BLE001
                    log.warning("index notification channel lost (%s); polling", exc)
                    _close_quietly(listener)
                    listener = None
                    next_connect = time.monotonic() + REDIS_RETRY_SECONDS
            else:
                self._stop.wait(self._poll)
            if self._stop.is_set():
                break
            try:
                self._holder.refresh()
            except Exception:  # noqa: BLE001 - a DB hiccup must not kill the thread
                log.exception("index refresh failed; will retry")
        if listener is not None:
            _close_quietly(listener)


def _close_quietly(listener: Listener) -> None:
    try:
        listener.close()
    except Exception:  # noqa: BLE001
        pass
