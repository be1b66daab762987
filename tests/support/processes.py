"""Lookalike's own commands as real subprocesses, each reproducing a :class:`Settings` (its host).

``lookalike worker``, ``lookalike beat`` and ``lookalike serve`` (gunicorn) are started
with :func:`settings_env`, so each process has the home, cache and addresses of the
host it plays; ``stop`` SIGKILLs its whole process group (a crashed machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings
from core.media import MEDIA_PREFIX

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s")


def settings_env(settings: Settings) -> dict[str, str]:
    """A minimal environment for a child process that reproduces ``settings``."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(settings.home),
           "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736", "LANG": "C.UTF-8"}
    return {**env, **settings.to_env()}


@dataclass
class CliProcess:
    """``python -m cli <args>`` as a subprocess leading its own process group, output to ``log_path``.

    Ready once its log shows ``ready_marker`` once more than before this start (a restart
    appends to the same log); subclasses with another notion of ready override ``is_ready``.
    """

    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    ready_marker: bytes = b" ready."
    _ready_before: int = 0

    def args(self) -> list[str]:
        raise NotImplementedError

    @property
    def what(self) -> str:
        return " ".join(self.args()[:1])

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it (it takes seconds to import torch)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._ready_before = self._markers()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", *self.args()],
            cwd=REPO, env=settings_env(self.settings), start_new_session=True,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )

    def _markers(self) -> int:
        return self.log_path.read_bytes().count(self.ready_marker) if self.log_path.exists() else 0

    def is_ready(self) -> bool:
        return self._markers() > self._ready_before

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None
        wait_until(lambda: self.is_ready() or self.process.poll() is not None, timeout, 0.1, f"{self.what} ready")
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.what} exited:\n" + self.log()[-4000:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL the whole process group: nothing a test looks at later depends on it."""
        if not self.running:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)  # start_new_session: it leads its own group
        self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class WorkerProcess(CliProcess):
    """``lookalike worker`` (prefork, ``concurrency`` children)."""

    concurrency: int = 1
    extra_args: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        return ["worker", "-c", str(self.concurrency), "--pool", "prefork", *self.extra_args]

    def child_pids(self) -> list[int]:
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children]


@dataclass
class BeatProcess(CliProcess):
    """``lookalike beat``: the schedule (with short settings, the orphaned-job sweep every few seconds)."""

    ready_marker: bytes = b"beat: Starting"

    def args(self) -> list[str]:
        return ["beat"]


@dataclass
class ApiProcess(CliProcess):
    """``lookalike serve`` (gunicorn, ``workers`` processes) on ``127.0.0.1:port``; ready when /healthz answers."""

    port: int = 0
    workers: int = 2

    def args(self) -> list[str]:
        return ["serve", "--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


def cached_media(settings: Settings) -> set[str]:
    """Names of the catalog images in a host's cache: the ones that host fetched from the store
    (a worker host only fetches what it embedded)."""
    folder = settings.resolved_cache_dir / "objects" / MEDIA_PREFIX
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
