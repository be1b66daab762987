"""A real `lookalike serve` (gunicorn) on a free loopback port, for the HTTP-level tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from core.config import Settings
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
ENV_FIELDS = ("home", "database_url", "broker_url", "redis_url", "index_poll_seconds", "annoy_search_k",
              "torch_threads", "max_k", "log_level", "verbose", "reads_public", "embed_batch_size", "trusted_proxies",
              "proxy_client_header_timeout", "proxy_client_body_timeout", "proxy_send_timeout",
              "serve_metadata_table")


def server_env(settings: Settings) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(settings.home),
           "LANG": "C.UTF-8", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
    exported = settings.to_env()
    for name in ENV_FIELDS:
        env[f"LOOKALIKE_{name.upper()}"] = exported[f"LOOKALIKE_{name.upper()}"]
    return env


@dataclass
class LiveServer:
    settings: Settings
    log_path: Path
    workers: int = 2
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> LiveServer:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--bind", f"127.0.0.1:{self.port}", "--workers",
             str(self.workers)],
            cwd=REPO, env=server_env(self.settings), start_new_session=True,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError("server exited:\n" + self.log())
                try:
                    if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                        return self
                except requests.RequestException:  # refused while binding, slow while workers boot
                    pass
                time.sleep(0.2)
            raise TimeoutError("server not ready:\n" + self.log())
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        pid = self.process.pid
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # gunicorn: graceful shutdown
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
