"""Start the full stack in order, keep it running, stop it cleanly.

Start order: PostgreSQL (cluster created on first use) -> Redis -> (with
``object_store``: SeaweedFS, until its bucket exists -> ``lookalike store init``) -> the migration
(must exit 0) -> the API (until gunicorn's ``/healthz`` answers) -> nginx (until
``/healthz`` answers through it) -> a worker -> beat. A
service that exits on its own is restarted with a backoff (1 s doubling to 30 s),
which is what docker-compose's ``restart: unless-stopped`` does; a service stopped
through :meth:`Stack.stop_service` stays down until :meth:`Stack.start_service`.
:meth:`Stack.stop` stops everything in reverse order.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

import redis

from core.artifacts import ArtifactError, open_store
from core.config import Settings
from stack.process import ConsoleSink, ManagedProcess
from stack.services import (
    StackConfig,
    StackError,
    create_database,
    init_postgres,
    pg_binary,
    postgres_user,
    service_specs,
)

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
"""A service up this long has its restart backoff reset."""


class Stack:
    """The supervisor: one :class:`ManagedProcess` per service and a monitor thread."""

    def __init__(self, config: StackConfig, base_settings: Settings, console: ConsoleSink | None = None) -> None:
        self.config = config
        self.settings = config.app_settings(base_settings)
        self.console = console
        self.services = {spec.name: ManagedProcess(spec, config.log_dir, console)
                         for spec in service_specs(config, self.settings)}
        self._held_down: set[str] = set(self.services)
        self._backoff = {name: 1.0 for name in self.services}
        self._restart_at: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Bring every service up, in order, each ready before the next; stop all on failure."""
        self._prepare_dirs()
        init_postgres(self.config)
        try:
            for name in self.services:
                self.start_service(name)
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(target=self._watch, name="stack-monitor", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop every service in reverse start order."""
        self._stopping.set()
        with self._lock:
            for name in reversed(list(self.services)):
                self._held_down.add(name)
                self.services[name].stop()
        if self._monitor is not None:
            self._monitor.join(5)

    def start_service(self, name: str) -> None:
        """Start one service and wait until it is ready (the migration: until it succeeded)."""
        with self._lock:
            service = self.services[name]
            service.start()
            self._held_down.discard(name)
        try:
            self._wait_ready(name)
        except BaseException:
            with self._lock:
                self._held_down.add(name)
                service.stop()
            raise

    def stop_service(self, name: str) -> None:
        """Stop one service and keep it down (for maintenance, or a fault drill)."""
        with self._lock:
            self._held_down.add(name)
            self._restart_at.pop(name, None)  # a restart it was waiting for no longer applies
            self.services[name].stop()

    def restart_service(self, name: str) -> None:
        self.stop_service(name)
        self.start_service(name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a service's whole process group as a crash would; the monitor restarts it."""
        self.services[name].signal(sig)

    # ------------------------------------------------------------------ readiness
    def _wait_ready(self, name: str) -> None:
        service = self.services[name]
        if service.spec.oneshot:
            code = service.wait(READY_TIMEOUT)
            if code != 0:
                raise StackError(f"{name} failed with exit code {code}; see {service.log_path}")
            return
        checks: dict[str, Callable[[], bool]] = {
            "postgres": self._postgres_ready, "redis": self._redis_ready,
            "api": lambda: self._healthy(self.config.gunicorn_url), "nginx": lambda: self._healthy(self.config.api_url),
            "seaweedfs": self._store_ready,
        }
        check = checks.get(name)
        if check is None:
            return  # worker and beat are consumers: nothing waits on them
        deadline = time.monotonic() + READY_TIMEOUT
        while not check():
            if not service.running:
                raise StackError(f"{name} exited with code {service.returncode}; see {service.log_path}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready after {READY_TIMEOUT:.0f}s; see {service.log_path}")
            time.sleep(0.2)
        if name == "postgres":
            create_database(self.config)

    def _postgres_ready(self) -> bool:
        probe = subprocess.run([pg_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.config.postgres_port),
                                "-U", "postgres"],
                               capture_output=True)
        return probe.returncode == 0

    def _redis_ready(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.config.redis_port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _store_ready(self) -> bool:
        """SeaweedFS's S3 port opens before its filer is up: ready once the bucket can be made."""
        try:
            open_store(self.settings).prepare()
        except ArtifactError:
            return False
        return True

    @staticmethod
    def _healthy(base_url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    # ------------------------------------------------------------------ monitor
    def _watch(self) -> None:
        """Restart services that exited on their own, with a backoff."""
        while not self._stopping.wait(0.5):
            with self._lock:
                for name, service in self.services.items():
                    if name in self._held_down or service.spec.oneshot or service.running:
                        if service.running and time.monotonic() - service.started_at > STABLE_AFTER:
                            self._backoff[name] = 1.0
                        continue
                    self._restart(name, service)

    def _restart(self, name: str, service: ManagedProcess) -> None:
        now = time.monotonic()
        due = self._restart_at.get(name)
        if due is None:
            delay = self._backoff[name]
            self._restart_at[name] = now + delay
            service.note(f"exited on its own (code {service.returncode}); restarting in {delay:.0f}s")
            return
        if now < due:
            return
        del self._restart_at[name]
        self._backoff[name] = min(MAX_BACKOFF, self._backoff[name] * 2)
        try:
            service.start()
        except OSError as exc:
            service.note(f"restart failed: {exc}")

    # ------------------------------------------------------------------ files
    def _prepare_dirs(self) -> None:
        root = self.config.root
        for sub in ("redis", "run", "logs", "objects"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        user = postgres_user()
        if user:
            shutil.chown(root / "run", user, user)
