"""The first step of a reindex: embed every active image that lacks a vector for the model.

With a broker the missing images are split into chunks that are *also* sent as
EMBED_CHUNK tasks, so every worker process on the embed queue helps. The reindex
process works through the same chunks from the back while the helpers take them
from the front; a chunk that is already done tells it that the two have met, and
it then waits for the helpers' last chunks. Nothing depends on the helpers: with
no other worker (or one killed) it does everything itself, and a chunk task that
arrives after the fact finds nothing missing and returns at once. No chord, no
result backend, no task waiting on another task's result (which can deadlock a
pool).

Progress is probed cheaply (vectors of the model written since the step began: one
indexed COUNT) at most once a second; the exact "what is still missing" check,
which is linear in the catalog, runs only when the count says the work is done.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.db import ModelVersion, session_scope
from core.db.types import utcnow
from core.embeddings_store import count_written_since, missing_image_ids
from core.task_names import TaskName
from worker.flows.embed import chunked, embed_and_store
from worker.runtime import Runtime

log = logging.getLogger(__name__)

STALL_SECONDS = 60.0
"""Waiting on helpers: if nothing got embedded for this long, do the rest here."""
POLL_SECONDS = 0.25
PROGRESS_SECONDS = 1.0
CLOCK_SLACK = dt.timedelta(seconds=60)
"""Helpers on other machines stamp vectors with their own clocks; count a little early."""


@dataclass
class CatchUp:
    missing: int = 0
    embedded_here: int = 0
    failed: list[int] = field(default_factory=list)
    fanned_out: int = 0
    """Chunks offered to other workers."""


class _Progress:
    """Counts what has been written so far, and reports it at most once a second."""

    def __init__(self, rt: Runtime, model: ModelVersion, total: int,
                 on_progress: Callable[[int, int], None] | None) -> None:
        self.rt, self.model, self.total, self.on_progress = rt, model, total, on_progress
        self.since = utcnow() - CLOCK_SLACK
        self._last_report = 0.0

    def written(self) -> int:
        with session_scope(self.rt.sessions) as s:
            return count_written_since(s, self.model.id, self.since)

    def report(self, force: bool = False) -> None:
        if self.on_progress is None or (not force and time.monotonic() - self._last_report < PROGRESS_SECONDS):
            return
        self._last_report = time.monotonic()
        self.on_progress(min(self.written(), self.total), self.total)


def _missing(rt: Runtime, model: ModelVersion, among: list[int] | None = None) -> list[int]:
    with session_scope(rt.sessions) as s:
        return missing_image_ids(s, model.id, among=among)


def embed_missing(
    rt: Runtime, model: ModelVersion, on_progress: Callable[[int, int], None] | None = None
) -> CatchUp:
    """Embed what is missing for ``model``; ``on_progress(done, total)`` now and then."""
    todo = _missing(rt, model)
    result = CatchUp(missing=len(todo))
    if not todo:
        return result
    progress = _Progress(rt, model, len(todo), on_progress)
    chunks = chunked(todo)
    fan_out = not rt.settings.embedded and len(chunks) > 1
    if fan_out:
        for chunk in chunks:
            rt.dispatcher.send(TaskName.EMBED_CHUNK, image_ids=chunk, model_version=model.version)
        result.fanned_out = len(chunks)
    for chunk in (reversed(chunks) if fan_out else chunks):
        outcome = embed_and_store(rt, model, chunk)
        result.embedded_here += outcome.stored
        result.failed.extend(outcome.failed)
        progress.report()
        if fan_out and outcome.stored == 0 and not outcome.failed:
            break  # met the helpers: everything before this chunk is theirs
    if fan_out:
        _wait_for_helpers(rt, model, todo, result, progress)
    progress.report(force=True)
    if result.failed:
        log.warning("%d images could not be embedded and are left out of the index", len(result.failed))
    return result


def _wait_for_helpers(rt: Runtime, model: ModelVersion, todo: list[int], result: CatchUp,
                      progress: _Progress) -> None:
    failed = set(result.failed)
    last_written, last_change = -1, time.monotonic()
    while True:
        written = progress.written()
        if written + len(failed) >= len(todo):
            left = [i for i in _missing(rt, model, todo) if i not in failed]
            if not left:
                return
        if written != last_written:
            last_written, last_change = written, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            left = [i for i in _missing(rt, model, todo) if i not in failed]
            log.warning("embed helpers stalled with %d images left; embedding them here", len(left))
            for chunk in chunked(left):
                outcome = embed_and_store(rt, model, chunk)
                result.embedded_here += outcome.stored
                result.failed.extend(outcome.failed)
            return
        progress.report()
        time.sleep(POLL_SECONDS)
