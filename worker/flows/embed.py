"""Embedding flows: images in, vectors in the ``embeddings`` table out.

``embed_images`` (EMBED_IMAGES) splits a request into chunks and fans them out as
EMBED_CHUNK tasks, so every worker process on the embed queue takes a share;
``embed_chunk`` embeds one chunk with the process's cached model. Each chunk adds
its size to the job's progress in one SQL statement, and the chunk that completes
the job finishes it and checks the freshness threshold. Everything is idempotent:
a chunk embeds only what is still missing, and vectors are inserted "if absent".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobKind, JobStatus, ModelVersion, session_scope
from core.db.types import utcnow
from core.embeddings_store import missing_media_keys, put_vectors
from core.jobs import create_job, fail_job, finish_job, get_job, start_job, update_progress
from core.media import MediaError
from core.registry import RegistryError
from core.task_names import TaskName
from worker.flows.freshness import after_embedding
from worker.flows.jobstate import EmbedState, save_state
from worker.flows.model_choice import NoActiveModel, target_models
from worker.runtime import Runtime

log = logging.getLogger(__name__)

EMBED_CHUNK_SIZE = 256
"""Images per EMBED_CHUNK task: big enough that the per-task overhead (a message,
two short transactions) stays a few percent of the embedding time, small enough
that two or more workers share a few thousand images evenly."""


@dataclass
class ChunkOutcome:
    stored: int = 0
    skipped: int = 0
    """Already embedded (a retry, or another worker got there first)."""
    failed: list[int] = field(default_factory=list)
    """Images whose stored file could not be read or decoded."""


def chunked(ids: Sequence[int], size: int = EMBED_CHUNK_SIZE) -> list[list[int]]:
    return [list(ids[start:start + size]) for start in range(0, len(ids), size)]


def embed_and_store(rt: Runtime, model: ModelVersion, image_ids: Sequence[int]) -> ChunkOutcome:
    """Embed those of ``image_ids`` that still lack a vector for ``model``, and store them."""
    with session_scope(rt.sessions) as s:
        keys = missing_media_keys(s, model.id, image_ids)
    todo = sorted(keys)
    outcome = ChunkOutcome(skipped=len(set(image_ids)) - len(todo))
    if not todo:
        return outcome
    images, ok_ids = [], []
    for image_id in todo:
        try:
            images.append(rt.media.open(keys[image_id]))
            ok_ids.append(image_id)
        except (MediaError, OSError, KeyError) as exc:
            log.warning("image %d cannot be embedded: %s", image_id, exc)
            outcome.failed.append(image_id)
    if images:
        vectors = rt.embedder(model).embed(images)
        with session_scope(rt.sessions) as s:
            put_vectors(s, model.id, ok_ids, vectors)
        outcome.stored = len(ok_ids)
    return outcome


def embed_images(rt: Runtime, image_ids: Sequence[int], job_id: int | None = None) -> dict[str, Any]:
    """EMBED_IMAGES: fan the images out in chunks, for the query model and the active model.

    Without a ``job_id`` an EMBED job is created, so every embedding has progress
    to watch and a completion that checks freshness.
    """
    ids = sorted({int(i) for i in image_ids})
    if job_id is None:
        job_id = create_job(rt.sessions, JobKind.EMBED, {"images": len(ids)})
    job = get_job(rt.sessions, job_id)
    if job.status.finished or EmbedState.from_json(job.result).dispatched:
        return job.result  # a redelivery: the chunks are already out
    start_job(rt.sessions, job_id)
    try:
        models = target_models(rt.sessions)
    except NoActiveModel as exc:
        fail_job(rt.sessions, job_id, str(exc))
        return {"error": str(exc)}
    chunks = chunked(ids)
    total = len(ids) * len(models)
    update_progress(rt.sessions, job_id, 0, total)
    state = EmbedState(dispatched=True, images=len(ids), chunks=len(chunks) * len(models),
                       models=[m.version for m in models])
    save_state(rt.sessions, job_id, state)
    result = state.to_json()
    if total == 0:
        finish_job(rt.sessions, job_id, result)
        return result
    for model in models:
        for chunk in chunks:
            rt.dispatcher.send(TaskName.EMBED_CHUNK, image_ids=chunk, model_version=model.version,
                               job_id=job_id)
    return result


def embed_chunk(
    rt: Runtime, image_ids: Sequence[int], model_version: str, job_id: int | None = None
) -> dict[str, Any]:
    """EMBED_CHUNK: embed one chunk, count it towards the job, finish the job if it was the last."""
    try:
        model = rt.model(model_version)
    except RegistryError as exc:
        if job_id is not None:
            fail_job(rt.sessions, job_id, str(exc))
        raise
    try:
        outcome = embed_and_store(rt, model, image_ids)
    except Exception as exc:
        if job_id is not None:
            fail_job(rt.sessions, job_id, f"embedding a chunk failed: {type(exc).__name__}: {exc}")
        raise
    if job_id is not None and _count_chunk(rt.sessions, job_id, len(image_ids), len(outcome.failed)):
        after_embedding(rt)
    return {"stored": outcome.stored, "skipped": outcome.skipped, "failed": outcome.failed}


def _count_chunk(sessions: sessionmaker[Session], job_id: int, size: int, failed: int) -> bool:
    """Add a chunk to the job's progress; True for the one chunk that completes the job.

    The increment happens in SQL (``done = done + n``) under the row's write lock, so
    concurrent chunks never lose an update, and exactly one sees the total reached.
    """
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(progress_done=Job.progress_done + size))
        job = s.get(Job, job_id, populate_existing=True)
        if job is None:
            return False
        if failed:
            state = EmbedState.from_json(job.result)
            state.failed += failed
            job.result = state.to_json()
        before = job.progress_done - size
        if job.status is JobStatus.RUNNING and before < job.progress_total <= job.progress_done:
            job.status = JobStatus.SUCCEEDED
            job.finished_at = utcnow()
            job.progress_done = job.progress_total
            return True
        return False

