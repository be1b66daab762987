"""What every endpoint that starts a job shares: its JSON body, sending its task, the 202 answer.

The job row is written *before* the task is sent; if the broker cannot be reached the
job is marked failed and the answer is a 503, so a client can simply retry and
nothing half-done is left behind (service/api/admin.py, service/api/duplicates.py).
"""

from __future__ import annotations

from typing import Any

from flask import Response

from core.dispatch import DispatchUnavailable
from core.jobs import fail_job, get_job, job_to_dict, set_task_id
from core.task_names import TaskName
from service.api.common import dispatch_errors, timed_json
from service.context import ServiceContext, service_context
from service.errors import ApiError, ErrorCode
from service.redact import redactor
from service.uploads import BodyKind, body_kind, json_object


def accepted_job(job_id: int, extra: dict[str, Any] | None = None) -> Response:
    """202 with the job (and ``extra``); ``Location`` points at it."""
    ctx = service_context()
    response = timed_json({"job": redactor().json(job_to_dict(get_job(ctx.sessions, job_id))), **(extra or {})},
                          202)
    response.headers["Location"] = f"/api/v1/jobs/{job_id}"
    return response


def send_job(ctx: ServiceContext, job_id: int, task: TaskName, **kwargs: Any) -> None:
    """Send ``task`` for ``job_id``; a broker that cannot be reached fails the job and answers 503."""
    with dispatch_errors():
        try:
            task_id = ctx.dispatcher.send(task, job_id=job_id, **kwargs)
        except DispatchUnavailable as exc:
            fail_job(ctx.sessions, job_id, f"could not be queued: {exc}")
            raise
    if task_id:
        set_task_id(ctx.sessions, job_id, task_id)


def only_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """400 naming the first field of ``body`` not in ``allowed``."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"unknown field {unknown[0]!r}: allowed are {', '.join(allowed) or 'none'}")


def optional_json() -> dict[str, Any]:
    """The request's JSON object, or {} for an empty body."""
    kind = body_kind(BodyKind.JSON, BodyKind.EMPTY)
    return json_object() if kind is BodyKind.JSON else {}
