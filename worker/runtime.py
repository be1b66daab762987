"""What a task needs, created once per worker process: SQL, media, dispatcher, models.

Nothing is created until first use, so a prefork parent that builds a runtime never
opens a database connection or touches torch (and so never initialises CUDA)
before it forks; :meth:`Runtime.after_fork` drops whatever a child inherited. The
embedding model is loaded once per process and kept for the next task: loading a
checkpoint costs far more than embedding one chunk.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from functools import cached_property

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import ModelVersion, make_engine, make_session_factory
from core.dispatch import TaskDispatcher
from core.embedding import Embedder, ModelSpec, resolve_device
from core.media import MediaStore
from core.registry import checkpoint_path, get_model

log = logging.getLogger(__name__)

MODEL_CACHE_SIZE = 2
"""Models kept per process: the query model and, during a model change, the new one."""


class Runtime:
    """Per-process resources shared by every task that process runs."""

    def __init__(self, settings: Settings, dispatcher: TaskDispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self._embedders: OrderedDict[str, Embedder] = OrderedDict()
        self._models: dict[str, ModelVersion] = {}
        self._models_lock = threading.Lock()

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def media(self) -> MediaStore:
        return MediaStore.from_settings(self.settings)

    def model(self, version: str) -> ModelVersion:
        """The registry row of model ``version`` (cached: what embedding needs never changes)."""
        cached = self._models.get(version)
        if cached is None:
            cached = get_model(self.sessions, version)
            self._models[version] = cached
        return cached

    def embedder(self, model: ModelVersion) -> Embedder:
        """The loaded embedder of ``model`` (cached; checked against the spec SQL recorded)."""
        with self._models_lock:
            cached = self._embedders.get(model.version)
            if cached is not None:
                self._embedders.move_to_end(model.version)
                return cached
            if self.settings.torch_threads > 0:
                torch.set_num_threads(self.settings.torch_threads)
            embedder = Embedder.from_checkpoint(
                checkpoint_path(self.settings, model.checkpoint_path, model.version),
                device=resolve_device(self.settings.device),
                batch_size=self.settings.embed_batch_size,
                expected_spec=ModelSpec.from_dict(model.spec),
            )
            log.info("loaded model %s (%r)", model.version, embedder)
            self._embedders[model.version] = embedder
            while len(self._embedders) > MODEL_CACHE_SIZE:
                self._embedders.popitem(last=False)
            return embedder

    def after_fork(self) -> None:
        """In a freshly forked child: forget connections and models from the parent."""
        engine = self.__dict__.pop("engine", None)
        if engine is not None:
            engine.dispose(close=False)  # the parent's sockets are the parent's to close
        self.__dict__.pop("sessions", None)
        self._embedders.clear()
        self._models.clear()
        self._models_lock = threading.Lock()

    def close(self) -> None:
        engine = self.__dict__.pop("engine", None)
        if engine is not None:
            engine.dispose()
        self.__dict__.pop("sessions", None)
        self._embedders.clear()
