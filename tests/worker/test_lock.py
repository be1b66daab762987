"""The reindex lock: exclusive, re-entrant for its owner job, expiring when its holder dies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support.servers import RedisServer
from worker.lock import FileLock, LockBusy, RedisLock, holding


def test_file_lock_excludes_other_holders_even_in_the_same_process(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "reindex.lock", "job-1"), FileLock(tmp_path / "reindex.lock", "job-2")
    first.acquire(0)
    with pytest.raises(LockBusy, match="job-1 holds"):
        second.acquire(0.3)
    first.release()
    second.acquire(0)
    second.release()


def test_file_lock_waits_for_the_holder(tmp_path: Path) -> None:
    holder, waiter = FileLock(tmp_path / "l", "a"), FileLock(tmp_path / "l", "b")
    holder.acquire(0)
    threading.Timer(0.3, holder.release).start()
    started = time.monotonic()
    waiter.acquire(5)
    assert time.monotonic() - started >= 0.25
    waiter.release()


@pytest.mark.redis
def test_redis_lock_is_reentrant_for_its_job_and_expires(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    key = "test:lock:reentrant"
    job1 = RedisLock(client, "job-1", ttl=0.5, key=key)
    job1.acquire(0)
    RedisLock(client, "job-1", ttl=0.5, key=key).acquire(0)  # a retry of the same job
    with pytest.raises(LockBusy, match="job-1 holds"):
        RedisLock(client, "job-2", ttl=0.5, key=key).acquire(0.2)
    time.sleep(0.6)  # the holder died without releasing: the key expires
    job2 = RedisLock(client, "job-2", ttl=5, key=key)
    job2.acquire(0)
    assert not job1.extend()  # the old holder learns it lost the lock
    job1.release()  # and cannot release somebody else's
    assert client.get(key) == b"job-2"
    job2.release()
    assert client.get(key) is None
    client.close()


@pytest.mark.redis
def test_holding_renews_the_lock_and_reports_a_loss(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    key = "test:lock:heartbeat"
    beats: list[float] = []
    lock = RedisLock(client, "job-1", ttl=0.4, key=key)
    with holding(lock, wait_seconds=0, beat_seconds=0.1, on_beat=lambda: beats.append(time.monotonic())) as held:
        time.sleep(0.8)  # twice the ttl: only the heartbeat keeps it
        assert client.get(key) == b"job-1" and not held.lost and len(beats) >= 4
        client.set(key, "job-2")  # taken over (as after an expiry)
        time.sleep(0.3)
        assert held.lost
    assert client.get(key) == b"job-2"  # the loser's release left the new holder alone
    client.delete(key)
    client.close()
