"""Everything a request handler needs, built once per app by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.dispatch import DispatchUnavailable, TaskDispatcher
from core.media import MediaStore
from core.task_names import TaskName
from service.metrics import Metrics
from service.searcher import Searcher
from service.urlfetch import UrlFetcher

_EXTENSION = "lookalike"


class NoDispatcher:
    """Stands in when nothing can run jobs (embedded mode without the CLI's in-process runner)."""

    def send(self, task: TaskName, **kwargs: Any) -> str:
        raise DispatchUnavailable(
            "no job runner is configured in this process: set LOOKALIKE_BROKER_URL, "
            "or start the API with `lookalike serve`, which runs jobs in-process in the embedded setup"
        )


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    media: MediaStore
    dispatcher: TaskDispatcher
    searcher: Searcher
    metrics: Metrics
    url_fetcher: UrlFetcher | None
    """None when URL fetching is disabled (the default)."""

    def close(self) -> None:
        """Stop the watcher thread and release connections (tests build many apps)."""
        self.searcher.close()
        closer = getattr(self.dispatcher, "close", None)
        if callable(closer):
            closer()
        self.engine.dispose()


def install_context(app: Any, context: ServiceContext) -> None:
    app.extensions[_EXTENSION] = context


def service_context() -> ServiceContext:
    """The context of the app handling the current request."""
    return current_app.extensions[_EXTENSION]
