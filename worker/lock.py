"""One reindex at a time: a lock with expiry, kept alive by a heartbeat while it is held.

With a broker the lock is a Redis key (``SET NX PX``) owned by the *job*, so a
retry of the same job after its worker was killed takes it straight back, while a
different job waits; a dead holder's key simply expires. In the embedded setup it
is an ``flock`` on a file under the home directory, which the kernel releases when
the holding process dies. Either way, a holder that lost its lock (it was frozen
past the expiry and someone else took over) learns it from :attr:`HeldLock.lost`
and must not publish.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import redis

from core.config import Settings

log = logging.getLogger(__name__)

REDIS_KEY = "lookalike:reindex-lock"
DEFAULT_TTL_SECONDS = 60.0
"""Expiry of the Redis key; the heartbeat renews it every third of that."""

_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class LockBusy(RuntimeError):
    """Another job holds the reindex lock; the message names it."""


class Lock(Protocol):
    def acquire(self, wait_seconds: float) -> None: ...
    def extend(self) -> bool: ...
    def release(self) -> None: ...


class RedisLock:
    """A Redis lock whose owner is a job id, re-entrant for that owner."""

    def __init__(self, client: redis.Redis, owner: str, *, ttl: float = DEFAULT_TTL_SECONDS,
                 key: str = REDIS_KEY) -> None:
        self.client, self.owner, self.ttl, self.key = client, owner, ttl, key

    def acquire(self, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        ttl_ms = int(self.ttl * 1000)
        while True:
            if self.client.set(self.key, self.owner, nx=True, px=ttl_ms):
                return
            holder = self.client.get(self.key)
            if holder is not None and holder.decode() == self.owner and self.extend():
                return  # our own earlier attempt, killed before it could release
            if time.monotonic() >= deadline:
                shown = holder.decode() if holder else "someone"
                raise LockBusy(f"another reindex is running ({shown} holds the reindex lock)")
            time.sleep(0.2)

    def extend(self) -> bool:
        return bool(self.client.eval(_EXTEND, 1, self.key, self.owner, int(self.ttl * 1000)))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.owner)


class FileLock:
    """``flock`` on a file: exclusive between processes *and* threads (one fd each)."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        self._fd: int | None = None

    def acquire(self, wait_seconds: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "someone"
                    os.close(fd)
                    raise LockBusy(f"another reindex is running ({holder} holds {self.path})") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.owner.encode(), 0)
        self._fd = fd

    def extend(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def reindex_lock(settings: Settings, owner: str) -> Lock:
    """The lock that fits the setup: Redis with a broker, a lock file without."""
    if settings.embedded or not settings.resolved_redis_url:
        return FileLock(settings.home.resolve() / "reindex.lock", owner)
    return RedisLock(redis.Redis.from_url(settings.resolved_redis_url, socket_timeout=10), owner)


class HeldLock:
    """What :func:`holding` yields: whether the lock was lost while held."""

    def __init__(self) -> None:
        self._lost = threading.Event()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()


@contextmanager
def holding(
    lock: Lock,
    *,
    wait_seconds: float,
    beat_seconds: float = DEFAULT_TTL_SECONDS / 3,
    on_beat: Callable[[], None] | None = None,
) -> Iterator[HeldLock]:
    """Acquire ``lock``, renew it every ``beat_seconds`` in a thread, release it at the end.

    ``on_beat`` runs with each renewal (the reindex touches its job there, which is
    the "sign of life" that keeps later requests joining it).
    """
    lock.acquire(wait_seconds)
    held = HeldLock()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(beat_seconds):
            try:
                if not lock.extend():
                    log.error("the reindex lock was lost (expired and taken over)")
                    held._lost.set()
                    return
                if on_beat is not None:
                    on_beat()
            except Exception:  # a blip must not kill the heartbeat; the expiry covers us
                log.exception("reindex lock heartbeat failed")

    thread = threading.Thread(target=beat, name="reindex-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        try:
            lock.release()
        except Exception:
            log.exception("could not release the reindex lock (it will expire)")
