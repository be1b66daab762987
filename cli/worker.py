"""``lookalike worker|beat|reindex|retrain|jobs``: run and drive the background work.

``reindex`` and ``retrain`` go through the broker when ``LOOKALIKE_BROKER_URL`` is
set (``--wait`` then follows the job until it ends) and run in this process in the
embedded setup (they always wait there). Exit codes: 0 when the job succeeded (or
was queued, without ``--wait``), 1 when it failed.

Long ML work wants glibc's allocator to keep big buffers mapped: start workers
with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` in the environment
(the Makefile and docker-compose set them).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from celery import Celery

from cli.context import CliContext
from core.config import Settings
from core.db import Job, JobKind, JobStatus
from core.dispatch import DispatchUnavailable, TaskDispatcher
from core.jobs import JobNotFound, create_job, get_job, job_to_dict, list_jobs, set_task_id
from core.reindex_requests import submit_reindex
from core.task_names import Queue, TaskName
from trainer.config import ConfigError
from trainer.retrain_config import retrain_config
from worker.celery_app import CeleryTaskSender, make_celery
from worker.local import InProcessDispatcher

POLL_SECONDS = 1.0


def dispatcher_for(settings: Settings) -> TaskDispatcher:
    """The broker with one configured; this process (synchronously) without."""
    if settings.embedded:
        return InProcessDispatcher(settings)
    return CeleryTaskSender(_celery_app(settings))


def _celery_app(settings: Settings) -> Celery:
    try:
        return make_celery(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option("-Q", "--queues", default=",".join(q.value for q in Queue), show_default=True,
              help="Comma-separated queues to consume (embed, index, train).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes. Each loads the model once; mind torch threads per process.")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork", show_default=True)
@click.option("--max-memory-per-child", type=click.IntRange(min=1), default=None,
              help="KiB; a process above it is replaced after its task (default 6 GiB).")
@click.option("--loglevel", default=None, help="Default: LOOKALIKE_LOG_LEVEL.")
@click.pass_obj
def worker(ctx: CliContext, queues: str, concurrency: int, pool: str,
           max_memory_per_child: int | None, loglevel: str | None) -> None:
    """Run a Celery worker (needs LOOKALIKE_BROKER_URL).

    Run a separate `-Q train -c 1` worker so that training never holds up embedding.
    """
    known = {q.value for q in Queue}
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    if not wanted or set(wanted) - known:
        raise click.BadParameter(f"queues must be among {sorted(known)}, got {queues!r}", param_hint="--queues")
    argv = ["worker", "-Q", ",".join(wanted), "-c", str(concurrency), "--pool", pool,
            "--loglevel", loglevel or ctx.settings.log_level, "-n", f"lookalike-{'-'.join(wanted)}@%h",
            # Job state lives in SQL, not in worker-to-worker sync: skip the start-up handshake.
            "--without-mingle", "--without-gossip"]
    if max_memory_per_child:
        argv += ["--max-memory-per-child", str(max_memory_per_child)]
    _celery_app(ctx.settings).worker_main(argv=argv)


@click.command()
@click.option("--loglevel", default=None, help="Default: LOOKALIKE_LOG_LEVEL.")
@click.pass_obj
def beat(ctx: CliContext, loglevel: str | None) -> None:
    """Run Celery beat: LOOKALIKE_REINDEX_CRON (reindex if changed), LOOKALIKE_RETRAIN_CRON (retrain)."""
    app = _celery_app(ctx.settings)
    ctx.settings.home.mkdir(parents=True, exist_ok=True)
    app.start(argv=["beat", "--loglevel", loglevel or ctx.settings.log_level])


@click.command()
@click.option("--force", is_flag=True, help="Build even if the active index is up to date.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends (always, in the embedded setup).")
@click.pass_obj
def reindex(ctx: CliContext, force: bool, wait: bool) -> None:
    """Embed what is missing, build and verify a new index, publish it."""
    dispatcher = dispatcher_for(ctx.settings)
    try:
        request = submit_reindex(ctx.settings, ctx.sessions, dispatcher, force=force, reason="cli")
    except DispatchUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'joined running' if request.joined else 'queued'} reindex job {request.job_id}")
    _follow(ctx, request.job_id, wait)


@click.command()
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Training config override (dotted key), e.g. --set epochs=3. Repeatable.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends (always, in the embedded setup).")
@click.pass_obj
def retrain(ctx: CliContext, overrides: tuple[str, ...], wait: bool) -> None:
    """Train on the catalog, evaluate on the holdout, promote and publish only if better.

    The config is the active model's with the --set overrides on top; a bad override is
    refused before any job is queued (docs/CONFIG.md, "Training config overrides").
    """
    try:
        retrain_config(ctx.sessions, ctx.settings.device, overrides=overrides)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc
    dispatcher = dispatcher_for(ctx.settings)
    params: dict[str, Any] = {"overrides": list(overrides), "reason": "cli"}
    job_id = create_job(ctx.sessions, JobKind.RETRAIN, params)
    click.echo(f"queued retrain job {job_id}")
    try:
        task_id = dispatcher.send(TaskName.RETRAIN, job_id=job_id, overrides=list(overrides), reason="cli")
    except DispatchUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    set_task_id(ctx.sessions, job_id, task_id)
    _follow(ctx, job_id, wait)


def _follow(ctx: CliContext, job_id: int, wait: bool) -> None:
    if not wait and not ctx.settings.embedded:
        return
    last = None
    while True:
        job = get_job(ctx.sessions, job_id)
        state = (job.status, job.phase, job.progress_done, job.progress_total)
        if state != last:
            click.echo(f"job {job_id}: {_line(job)}")
            last = state
        if job.status.finished:
            break
        time.sleep(POLL_SECONDS)
    click.echo(json.dumps(job.result, indent=2, sort_keys=True))
    if job.status is not JobStatus.SUCCEEDED:
        raise click.ClickException(f"job {job_id} {job.status.value}: {job.error or 'no error recorded'}")


def _line(job: Job) -> str:
    phase = f" {job.phase.value}" if job.phase.value else ""
    progress = f"{phase} {job.progress_done}/{job.progress_total}" if job.progress_total else phase
    error = f" - {job.error}" if job.error else ""
    return f"{job.kind.value} {job.status.value}{progress}{error}"


@click.group()
def jobs() -> None:
    """Background jobs (import, embed, reindex, retrain): list and inspect."""


@jobs.command("list")
@click.option("--kind", type=click.Choice([k.value for k in JobKind]))
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def list_command(ctx: CliContext, kind: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """The newest jobs first."""
    found = list_jobs(ctx.sessions, kind=JobKind(kind) if kind else None,
                      status=JobStatus(status) if status else None, limit=limit)
    for job in found:
        if as_json:
            click.echo(json.dumps(job_to_dict(job)))
        else:
            click.echo(f"{job.id:>6}  {job.created_at:%Y-%m-%d %H:%M:%S}  {_line(job)}")
    if not found and not as_json:
        click.echo("no jobs")


@jobs.command("show")
@click.argument("job_id", type=int)
@click.pass_obj
def show_command(ctx: CliContext, job_id: int) -> None:
    """Everything about one job, as JSON."""
    try:
        job = get_job(ctx.sessions, job_id)
    except JobNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(job_to_dict(job), indent=2, sort_keys=True))
