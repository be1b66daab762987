"""What a job stores between its attempts, typed per kind, and the small row updates flows share.

A job's resume state lives in its JSON columns (core/jobs.py has the life cycle): the
task that runs it in ``jobs.params`` (worker/flows/recovery.py sends it again), and in
``jobs.result`` what its steps finished, which a retry reads to skip them. Each kind has
a dataclass here, read with ``from_json`` and written with ``to_json``; no flow indexes
those dicts by string. The stored JSON is exactly what the flows wrote before these
types existed (the job result is also what the API shows), so rows already stored read
back unchanged: ``from_json(d).to_json() == d`` for every shape a flow stores, keys a
type does not know included (tests/worker/test_jobstate.py). See docs/DECISIONS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, session_scope
from core.db.types import utcnow
from core.task_names import TaskName

JSON = dict[str, Any]


class JobState(Protocol):
    """A kind's resume state: what :func:`save_state` writes into the job's result."""

    def to_json(self) -> JSON: ...


@dataclass(frozen=True)
class TaskRecord:
    """How to run a job again: its task's name and JSON arguments, in ``jobs.params["task"]``."""

    name: TaskName
    kwargs: JSON

    PARAM: ClassVar[str] = "task"

    @classmethod
    def from_json(cls, data: JSON) -> TaskRecord:
        return cls(TaskName(data["name"]), dict(data["kwargs"]))

    def to_json(self) -> JSON:
        return {"name": self.name.value, "kwargs": self.kwargs}

    @classmethod
    def read(cls, params: JSON) -> TaskRecord | None:
        """The record in a job's ``params``; None for a job that has none (it is not resumable)."""
        data = params.get(cls.PARAM)
        return cls.from_json(data) if data else None

    def into(self, params: JSON) -> JSON:
        """``params`` with this record stored in them (a new dict)."""
        return {**params, self.PARAM: self.to_json()}


@dataclass
class EmbedState:
    """An EMBED job's result: set once its chunks are out, then counts the images that failed."""

    dispatched: bool = False
    """The chunks were sent: a redelivered EMBED_IMAGES must not send them again."""
    images: int = 0
    chunks: int = 0
    models: list[str] = field(default_factory=list)
    failed: int = 0
    """Images whose file could not be read or decoded, summed over the chunks."""
    extra: JSON = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = ("dispatched", "images", "chunks", "models", "failed")

    @classmethod
    def from_json(cls, data: JSON) -> EmbedState:
        return cls(dispatched=bool(data.get("dispatched", False)), images=int(data.get("images", 0)),
                   chunks=int(data.get("chunks", 0)), models=list(data.get("models", [])),
                   failed=int(data.get("failed", 0)), extra=_extra(data, cls._KEYS))

    def to_json(self) -> JSON:
        out: JSON = dict(self.extra)
        if self.dispatched:
            out.update(dispatched=True, images=self.images, chunks=self.chunks, models=list(self.models))
        if self.failed:  # absent until a chunk fails, as in the rows stored so far
            out["failed"] = self.failed
        return out


@dataclass
class SearchStep:
    """The recipe search's report and the winning recipe (a TrainConfig dict)."""

    search: JSON
    recipe: JSON


@dataclass
class TrainedStep:
    """The trained, registered candidate and its holdout metrics."""

    candidate: str
    metrics: JSON


@dataclass
class BaselineStep:
    """The frozen pretrained baseline: its version and metrics, or none and why."""

    version: str | None
    metrics: JSON | None
    note: str | None = None


@dataclass
class GateStep:
    """The promotion decision, what it compared against, and whether it was carried out."""

    active: str | None
    active_metrics: JSON | None
    decision: JSON
    promoted: bool = False
    promoted_version: str | None = None


@dataclass
class ReindexStep:
    """The reindex a promotion ran: its result and the index it published."""

    result: JSON
    index_version: str | None


@dataclass
class RetrainState:
    """A RETRAIN job's result: one field per finished step, None while it is still to do."""

    config: JSON | None = None
    """The config this attempt trains: the active model's config with the request's overrides."""
    search: SearchStep | None = None
    run_dir: str | None = None
    """The training's run directory, set once the candidate is registered."""
    trained: TrainedStep | None = None
    feedback: JSON | None = None
    """The feedback the trained candidate saw (counts by judgement and source, the weights); with ``trained``."""
    baseline: BaselineStep | None = None
    gate: GateStep | None = None
    reindex: ReindexStep | None = None
    extra: JSON = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = (
        "config", "search", "recipe", "run_dir", "candidate", "candidate_metrics", "feedback", "baseline",
        "baseline_metrics", "baseline_note", "active", "active_metrics", "decision", "promoted", "promoted_version",
        "reindex", "index_version")

    @classmethod
    def from_json(cls, data: JSON) -> RetrainState:
        """Read a stored result; a step counts as done when its keys are there (None is a value)."""
        return cls(
            config=data.get("config"),
            search=SearchStep(data.get("search") or {}, data["recipe"]) if "recipe" in data else None,
            run_dir=data.get("run_dir"),
            trained=(TrainedStep(data["candidate"], data["candidate_metrics"])
                     if "candidate_metrics" in data else None),
            feedback=data.get("feedback"),
            baseline=(BaselineStep(data["baseline"], data.get("baseline_metrics"), data.get("baseline_note"))
                      if "baseline" in data else None),
            gate=(GateStep(data.get("active"), data.get("active_metrics"), data["decision"],
                           bool(data.get("promoted", False)), data.get("promoted_version"))
                  if "decision" in data else None),
            reindex=ReindexStep(data["reindex"], data.get("index_version")) if "reindex" in data else None,
            extra=_extra(data, cls._KEYS),
        )

    def to_json(self) -> JSON:
        out: JSON = dict(self.extra)
        if self.config is not None:
            out["config"] = self.config
        if self.search is not None:
            out.update(search=self.search.search, recipe=self.search.recipe)
        if self.run_dir is not None:
            out["run_dir"] = self.run_dir
        if self.trained is not None:
            out.update(candidate=self.trained.candidate, candidate_metrics=self.trained.metrics)
        if self.feedback is not None:
            out["feedback"] = self.feedback
        if self.baseline is not None:
            out.update(baseline=self.baseline.version, baseline_metrics=self.baseline.metrics)
            if self.baseline.note is not None:
                out["baseline_note"] = self.baseline.note
        if self.gate is not None:
            out.update(active=self.gate.active, active_metrics=self.gate.active_metrics,
                       decision=self.gate.decision, promoted=self.gate.promoted,
                       promoted_version=self.gate.promoted_version)
        if self.reindex is not None:
            out.update(reindex=self.reindex.result, index_version=self.reindex.index_version)
        return out


def _extra(data: JSON, known: tuple[str, ...]) -> JSON:
    """The keys a type does not model, kept so that reading and writing a row loses nothing."""
    return {k: v for k, v in data.items() if k not in known}


def save_state(sessions: sessionmaker[Session], job_id: int, state: JobState) -> None:
    """Store ``state`` in a job's result (what a retry reads to skip finished steps)."""
    with session_scope(sessions) as s:  # under the row's write lock: chunks add to EMBED results too
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        job.result = {**job.result, **state.to_json()}


def touch_job(sessions: sessionmaker[Session], job_id: int) -> None:
    """A sign of life: keeps later reindex requests joining this job rather than giving up on it."""
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow()))
