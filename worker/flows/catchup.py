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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.db import ModelVersion, session_scope
from core.embeddings_store import missing_image_ids
from core.tasks import TaskName
from worker.flows.embed import chunked, embed_and_store
from worker.runtime import Runtime

log = logging.getLogger(__name__)

STALL_SECONDS = 60.0
"""Waiting on helpers: if nothing got embedded for this long, do the rest here."""
POLL_SECONDS = 0.25


@dataclass
class CatchUp:
    missing: int = 0
    embedded_here: int = 0
    failed: list[int] = field(default_factory=list)
    fanned_out: int = 0
    """Chunks offered to other workers."""


def _missing(rt: Runtime, model: ModelVersion, among: list[int] | None = None) -> list[int]:
    with session_scope(rt.sessions) as s:
        return missing_image_ids(s, model.id, among=among)


def embed_missing(
    rt: Runtime, model: ModelVersion, on_progress: Callable[[int, int], None] | None = None
) -> CatchUp:
    """Embed what is missing for ``model``; ``on_progress(done, total)`` after each chunk."""
    todo = _missing(rt, model)
    result = CatchUp(missing=len(todo))
    if not todo:
        return result
    chunks = chunked(todo)
    fan_out = not rt.settings.embedded and len(chunks) > 1
    if fan_out:
        for chunk in chunks:
            rt.dispatcher.send(TaskName.EMBED_CHUNK, image_ids=chunk, model_version=model.version)
        result.fanned_out = len(chunks)

    def report() -> int:
        left = len(_missing(rt, model, todo)) - len(result.failed)
        if on_progress is not None:
            on_progress(len(todo) - left, len(todo))
        return left

    for chunk in (reversed(chunks) if fan_out else chunks):
        outcome = embed_and_store(rt, model, chunk)
        result.embedded_here += outcome.stored
        result.failed.extend(outcome.failed)
        report()
        if fan_out and outcome.stored == 0 and not outcome.failed:
            break  # met the helpers: everything before this chunk is theirs
    if fan_out:
        _wait_for_helpers(rt, model, todo, result, report)
    if result.failed:
        log.warning("%d images could not be embedded and are left out of the index", len(result.failed))
    return result


def _wait_for_helpers(rt: Runtime, model: ModelVersion, todo: list[int], result: CatchUp,
                      report: Callable[[], int]) -> None:
    last_left, last_change = report(), time.monotonic()
    while last_left > 0:
        if time.monotonic() - last_change > STALL_SECONDS:
            log.warning("embed helpers stalled with %d images left; embedding them here", last_left)
            failed = set(result.failed)
            left = [i for i in _missing(rt, model, todo) if i not in failed]
            for chunk in chunked(left):
                outcome = embed_and_store(rt, model, chunk)
                result.embedded_here += outcome.stored
                result.failed.extend(outcome.failed)
            report()
            return
        time.sleep(POLL_SECONDS)
        left = report()
        if left != last_left:
            last_left, last_change = left, time.monotonic()
