"""Admin endpoints: imports, reindex, retrain, jobs, models (indexes: service/api/indexes.py).

Long operations answer 202 with the job they created (``Location`` points at it);
service/api/job_requests.py says how a job is sent and why nothing half-done is left.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request

from core.artifacts import ArtifactStore, StoreUnavailable, open_store
from core.catalog import CatalogFormatError, ImportFormat
from core.catalog.archives import ARCHIVE_FORMAT, ARCHIVE_SUFFIX, check_archive
from core.catalog.imports import host_bound_rows
from core.config import IMPORT_MAX_BYTES, MULTIPART_OVERHEAD
from core.db import JobKind, JobStatus
from core.import_uploads import save_upload
from core.jobs import JobNotFound, create_job, get_job, job_to_dict, list_jobs
from core.registry import (
    RegistryError,
    activate_model,
    get_model,
    list_models,
    model_to_dict,
)
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from service.api.common import dispatch_errors, timed_json
from service.api.job_requests import accepted_job, only_keys, optional_json, send_job
from service.api.params import check_params, page_params
from service.auth import Access, requires
from service.context import ServiceContext, service_context
from service.errors import ApiError, ErrorCode, bad_param, not_found
from service.redact import redactor
from service.uploads import BodyKind, allow_body, body_kind, uploaded_file
from trainer.config import ConfigError
from trainer.retrain_config import retrain_config

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__)

UPLOAD_CHECK_ROWS = 1_000
"""Rows of an upload read at request time for image references no worker can resolve (20-60 ms)."""

_UPLOAD_FORMATS = (ImportFormat.CSV.value, ImportFormat.JSONL.value, ARCHIVE_FORMAT)
_SUFFIX_FORMATS = {".csv": ImportFormat.CSV.value, ".jsonl": ImportFormat.JSONL.value,
                   ".ndjson": ImportFormat.JSONL.value, ARCHIVE_SUFFIX: ARCHIVE_FORMAT}


def _bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise bad_param(name, f"must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------- imports
@bp.post("/imports")
@requires(Access.WRITE)
def create_import() -> Response:
    """Upload a CSV or JSONL catalog file, or a zip of one with its images; a job imports it.
    Image paths in a CSV or JSONL are absolute paths inside the workers'
    ``LOOKALIKE_IMPORT_ROOTS`` (docs/CONFIG.md, "Where an import may read images"); a relative
    one is refused here (an upload has no folder). In a zip they are relative to the archive.

    The file goes to the artifact store (core/import_uploads.py) before the job row is
    written, and the job names its key: any worker host can fetch it.
    """
    ctx = service_context()
    check_params(())
    body_kind(BodyKind.MULTIPART)
    allow_body(IMPORT_MAX_BYTES + MULTIPART_OVERHEAD)
    unknown = sorted(str(k) for k in set(request.form) - {"format", "delete_missing"})
    if unknown:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"unknown form field {unknown[0]!r}: allowed are file, format, delete_missing")
    upload = uploaded_file("file")
    fmt = _import_format(request.form.get("format"), upload.filename or "")
    delete_missing = _form_bool("delete_missing")
    with _received(ctx, upload.stream) as received:
        if fmt == ARCHIVE_FORMAT:
            _check_archive(received)
        else:
            _refuse_host_bound_rows(received, ImportFormat(fmt))
        try:
            stored = save_upload(_store(ctx), received, fmt)
        except StoreUnavailable as exc:
            log.warning("import upload not stored: %s", exc)  # the store's address: the log only
            raise ApiError(503, ErrorCode.STORE_UNAVAILABLE,
                           "the artifact store cannot be reached: the import file was not saved and no job "
                           "was created; send it again later", headers={"Retry-After": "5"}) from exc
    job_id = create_job(ctx.sessions, JobKind.IMPORT,
                        {"upload": stored.to_dict(), "format": fmt, "filename": upload.filename or "",
                         "delete_missing": delete_missing})
    send_job(ctx, job_id, TaskName.IMPORT_CATALOG, upload=stored.to_dict(), format=fmt, delete_missing=delete_missing)
    return accepted_job(job_id)


def _form_bool(name: str) -> bool:
    raw = request.form.get(name, "false")
    if raw not in {"true", "false"}:
        raise bad_param(name, f"must be true or false, got {raw!r}")
    return raw == "true"


def _import_format(given: str | None, filename: str) -> str:
    """``csv``, ``jsonl`` or ``zip`` (:data:`ARCHIVE_FORMAT`: a catalog with its images)."""
    if given:
        fmt = given.strip().lower()
        if fmt == ImportFormat.FOLDER.value:
            raise bad_param("format", "a folder cannot be uploaded: use csv or jsonl, or zip the folder "
                            "with a catalog file")
        if fmt not in _UPLOAD_FORMATS:
            raise bad_param("format", f"must be csv, jsonl or zip, got {given!r}")
        return fmt
    fmt_or_none = _SUFFIX_FORMATS.get(Path(filename).suffix.lower())
    if fmt_or_none is None:
        raise bad_param("format", f"cannot tell the format of {filename!r}: name it .csv, .jsonl or .zip, "
                        "or send format=csv|jsonl|zip")
    return fmt_or_none


def _check_archive(path: Path) -> None:
    """400 unless the zip holds one catalog and safe member names (core/catalog/archives.py)."""
    try:
        check_archive(path)
    except CatalogFormatError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, str(exc)) from None


def _store(ctx: ServiceContext) -> ArtifactStore:
    """The store uploads go to: the media store's client where it has one (S3), else the local one."""
    return ctx.media.shared.store if ctx.media.shared is not None else open_store(ctx.settings)


@contextmanager
def _received(ctx: ServiceContext, stream: Any) -> Iterator[Path]:
    """The upload in a temporary file on this host (removed afterwards, whatever happens)."""
    directory = ctx.settings.resolved_artifacts_dir / "imports"
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")  # hidden: never listed as a key
    path = Path(name)
    try:
        written = 0
        with os.fdopen(fd, "wb") as fh:
            while chunk := stream.read(1 << 20):
                written += len(chunk)
                if written > IMPORT_MAX_BYTES:
                    raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE,
                                   f"import file is larger than {IMPORT_MAX_BYTES:,} bytes")
                fh.write(chunk)
        if written == 0:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "the uploaded file is empty")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _refuse_host_bound_rows(path: Path, fmt: ImportFormat) -> None:
    """400 if the first rows name images by relative path, which no worker host can resolve."""
    try:
        bad = host_bound_rows(path, fmt, max_rows=UPLOAD_CHECK_ROWS)
    except CatalogFormatError:
        return  # the file as a whole is unreadable: the job says why, as for any import
    if bad:
        rows = "; ".join(f"line {e.line}: {e.reason}" for e in bad)
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"the catalog cannot be imported as uploaded: {rows}")


# --------------------------------------------------------------------------- reindex / retrain
@bp.post("/reindex")
@requires(Access.WRITE)
def reindex() -> Response:
    ctx = service_context()
    check_params(())
    body = optional_json()
    only_keys(body, ("force",))
    force = _bool_field(body, "force", False)
    with dispatch_errors():
        outcome = submit_reindex(ctx.settings, ctx.sessions, ctx.dispatcher, force=force, reason="api")
    return accepted_job(outcome.job_id, {"joined": outcome.joined})


@bp.post("/retrain")
@requires(Access.WRITE)
def retrain() -> Response:
    """Queue a retrain whose config is the active model's with ``config``'s overrides on top."""
    ctx = service_context()
    check_params(())
    body = optional_json()
    only_keys(body, ("config",))
    config = body.get("config", {})
    if not isinstance(config, dict):
        raise bad_param("config", "must be an object of training overrides")
    # Refused here, with the key named, rather than by the worker after a 202: the same
    # resolution the worker repeats when the job runs (docs/CONFIG.md, "Training config overrides").
    try:
        retrain_config(ctx.sessions, ctx.settings.device, config)
    except ConfigError as exc:
        raise bad_param("config", str(exc)) from exc
    job_id = create_job(ctx.sessions, JobKind.RETRAIN, {"config": config, "reason": "api"})
    send_job(ctx, job_id, TaskName.RETRAIN, config=config or None)
    return accepted_job(job_id)


# --------------------------------------------------------------------------- jobs
@bp.get("/jobs")
@requires(Access.READ)
def jobs() -> Response:
    check_params(("kind", "status", "limit", "offset"))
    limit, offset = page_params()
    kind = _enum_param("kind", JobKind)
    status = _enum_param("status", JobStatus)
    found = list_jobs(service_context().sessions, kind=kind, status=status, limit=limit, offset=offset)
    return timed_json({"jobs": redactor().json([job_to_dict(j) for j in found]), "limit": limit, "offset": offset})


@bp.get("/jobs/<int:job_id>")
@requires(Access.READ)
def job(job_id: int) -> Response:
    check_params(())
    try:
        found = get_job(service_context().sessions, job_id)
    except JobNotFound as exc:
        raise not_found(str(exc)) from exc
    return timed_json(redactor().json(job_to_dict(found)))


def _enum_param(name: str, enum_type: Any) -> Any:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return enum_type(raw)
    except ValueError:
        raise bad_param(name, f"must be one of {', '.join(e.value for e in enum_type)}, got {raw!r}") from None


# --------------------------------------------------------------------------- models
@bp.get("/models")
@requires(Access.READ)
def models() -> Response:
    check_params(())
    models = [model_to_dict(m) for m in list_models(service_context().sessions)]
    return timed_json({"models": redactor().json(models)})


@bp.post("/models/<version>/activate")
@requires(Access.WRITE)
def activate(version: str) -> Response:
    """Make ``version`` the active model and (by default) queue the reindex that serves it."""
    ctx = service_context()
    check_params(())
    body = optional_json()
    only_keys(body, ("reindex",))
    want_reindex = _bool_field(body, "reindex", True)
    if "\x00" in version:
        raise not_found(f"model version {version[:80]!r} does not exist")
    try:
        activate_model(ctx.sessions, version)
    except RegistryError as exc:
        raise not_found(str(exc)) from exc
    answer: dict[str, Any] = {"model": redactor().json(model_to_dict(get_model(ctx.sessions, version))),
                              "reindex_job_id": None}
    if want_reindex:
        with dispatch_errors(saved=f"model {version} was activated"):
            answer["reindex_job_id"] = submit_reindex(ctx.settings, ctx.sessions, ctx.dispatcher,
                                                      reason=f"model {version} activated").job_id
    return timed_json(answer)
