"""Building the worker's Celery app: what it connects to the process-wide signals."""

from __future__ import annotations

from celery.signals import worker_process_init

from core.config import Settings
from worker.celery_app import make_celery


def test_apps_share_one_after_fork_receiver_that_resets_every_runtime(settings: Settings) -> None:
    configured = settings.replace(broker_url="redis://127.0.0.1:1/0")  # never connected here
    before = len(worker_process_init.receivers)
    apps = [make_celery(configured) for _ in range(3)]
    assert len(worker_process_init.receivers) <= before + 1  # one receiver, however many apps
    runtimes = [app.lookalike_runtime for app in apps]
    for runtime in runtimes:
        runtime._models["m"] = object()  # what a parent process would have cached
    worker_process_init.send(sender=None)  # what Celery sends in each forked child
    assert all(not runtime._models for runtime in runtimes)
