"""The "index changed" notification on Redis pub/sub (no Celery involved).

A publish commits the new active index in SQL first and only then announces it
here, so a listener that reacts to the message always finds the new state in SQL.
The message is only a hint to look now: SQL is the truth, and API processes also
poll it (``index_poll_seconds``), so a lost message (Redis down, no Redis in the
embedded setup) delays a swap by one poll and breaks nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from core.config import Settings
from core.task_names import INDEX_CHANGED_CHANNEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexChanged:
    index_version: str
    model_version: str

    def to_json(self) -> str:
        return json.dumps({"index_version": self.index_version, "model_version": self.model_version})

    @classmethod
    def from_json(cls, raw: str | bytes) -> IndexChanged:
        data = json.loads(raw)
        return cls(index_version=str(data["index_version"]), model_version=str(data["model_version"]))


def publish_index_changed(settings: Settings, message: IndexChanged) -> int:
    """Announce a newly published index; return how many listeners got it.

    Best effort by design (see the module docstring): with no Redis configured, or
    Redis unreachable, it logs and returns 0 instead of failing a publish that has
    already been committed.
    """
    url = settings.resolved_redis_url
    if not url:
        return 0
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return int(client.publish(INDEX_CHANGED_CHANNEL, message.to_json()))
    except redis.RedisError as exc:
        log.warning("index %s published, but the notification failed: %s", message.index_version, exc)
        return 0
    finally:
        client.close()


class IndexChangeListener:
    """A subscription to the channel; poll it with :meth:`wait` from a background thread."""

    def __init__(self, settings: Settings) -> None:
        url = settings.resolved_redis_url
        if not url:
            raise ValueError("no Redis configured (LOOKALIKE_REDIS_URL or LOOKALIKE_BROKER_URL)")
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(INDEX_CHANGED_CHANNEL)

    def wait(self, timeout: float) -> IndexChanged | None:
        """The next announcement, or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            # Subscription confirmations come back as None too: keep waiting for a message.
            message: dict[str, Any] | None = self._pubsub.get_message(timeout=left)
            if message is None or message.get("type") != "message":
                continue
            try:
                return IndexChanged.from_json(message["data"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed index-changed message: %r", message.get("data"))
        return None

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()
