"""One supervised child process: started in its own process group, its output in one log.

Each child leads its own process group (``start_new_session``), so stopping it
reaches gunicorn's or Celery's own children too, and a Ctrl-C in the terminal
reaches only the supervisor, which then stops everything in order. A reader
thread copies every output line to ``logs/<name>.log`` and, prefixed with the
name, to the console sink.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ConsoleSink = Callable[[str], None]


@dataclass(frozen=True)
class ProcessSpec:
    """How to run and stop one service."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    """Added to the supervisor's own environment."""
    cwd: Path | None = None
    user: str | None = None
    """Run as this system user (PostgreSQL refuses to run as root)."""
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 30.0
    """Seconds between ``stop_signal`` and SIGKILL to the whole group."""
    oneshot: bool = False
    """Runs to completion (the migration); never restarted."""


class ManagedProcess:
    """A running (or stopped) instance of a :class:`ProcessSpec`."""

    def __init__(self, spec: ProcessSpec, log_dir: Path, console: ConsoleSink | None = None) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.console = console
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.spec.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The children inherit the supervisor's environment (PATH, PYTHONPATH, the
        # allocator variables make exports) plus the service's own settings.
        env = {**os.environ, **self.spec.env}
        extra = {"user": self.spec.user} if self.spec.user else {}
        self.process = subprocess.Popen(
            list(self.spec.argv), cwd=self.spec.cwd, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **extra,
        )
        self.started_at = time.monotonic()
        self.note(f"started (pid {self.process.pid}): {' '.join(self.spec.argv)}")
        self._pump = threading.Thread(target=self._copy_output, args=(self.process.stdout,),
                                      name=f"{self.spec.name}-log", daemon=True)
        self._pump.start()

    def wait(self, timeout: float | None = None) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._pump is not None:
            self._pump.join(5)
        return code

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the whole process group (the service and its own children)."""
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """``stop_signal``, then SIGKILL to the group after ``stop_timeout``; quiet if not running."""
        if self.process is None or self.process.returncode is not None:
            return  # never started, or already reaped
        if self.running:
            self.note(f"stopping ({self.spec.stop_signal.name})")
            self.signal(self.spec.stop_signal)
            try:
                self.process.wait(self.spec.stop_timeout)
            except subprocess.TimeoutExpired:
                self.note(f"still running after {self.spec.stop_timeout:.0f}s: SIGKILL")
        # Whatever is left of the group (a straggling grandchild) goes too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()
        self.note(f"stopped (exit code {self.process.returncode})")

    def _copy_output(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with open(self.log_path, "ab", buffering=0) as sink:
            for line in iter(stream.readline, b""):
                sink.write(line)
                if self.console is not None:
                    self.console(f"{self.spec.name:<8}| {line.decode(errors='replace').rstrip()}")
        stream.close()

    def note(self, message: str) -> None:
        """A supervisor line, in the service's own log and on the console."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [stack] {message}"
        with open(self.log_path, "a") as sink:
            sink.write(line + "\n")
        if self.console is not None:
            self.console(f"{self.spec.name:<8}| {line}")
