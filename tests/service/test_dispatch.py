"""CeleryDispatcher: tasks land on their queue by name; an unreachable broker is DispatchUnavailable."""

from __future__ import annotations

import json
import time

import pytest
import redis

from core.config import Settings
from core.dispatch import DispatchUnavailable
from core.task_names import TASK_QUEUES, TaskName
from service.celery_client import CeleryDispatcher
from tests.support.servers import RedisServer


@pytest.mark.redis
def test_sends_by_name_to_the_task_queue(redis_server: RedisServer, tmp_path) -> None:
    broker = redis_server.url.rsplit("/", 1)[0] + "/14"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    dispatcher = CeleryDispatcher(Settings(home=tmp_path, broker_url=broker))
    try:
        task_id = dispatcher.send(TaskName.REINDEX, job_id=7, force=True)
        dispatcher.send(TaskName.EMBED_IMAGES, image_ids=[1, 2], job_id=None)
        assert client.llen(TASK_QUEUES[TaskName.REINDEX].value) == 1
        assert client.llen(TASK_QUEUES[TaskName.EMBED_IMAGES].value) == 1
        message = json.loads(client.lpop("index"))
        assert message["headers"]["task"] == "lookalike.reindex" and message["headers"]["id"] == task_id
    finally:
        dispatcher.close()
        client.flushdb()
        client.close()


def test_unreachable_broker_fails_fast(tmp_path) -> None:
    dispatcher = CeleryDispatcher(Settings(home=tmp_path, broker_url="redis://127.0.0.1:1/0"), connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DispatchUnavailable, match="unreachable"):
        dispatcher.send(TaskName.REINDEX, job_id=1)
    assert time.monotonic() - started < 5
    dispatcher.close()


def test_needs_a_broker(tmp_path) -> None:
    with pytest.raises(ValueError, match="broker_url"):
        CeleryDispatcher(Settings(home=tmp_path))
