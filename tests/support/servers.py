"""Throwaway PostgreSQL and Redis servers on loopback for integration tests.

Each server lives in its own temporary directory, listens on a free port on
127.0.0.1, and is stopped (and its files removed) when the fixture ends. When the
tests run as root (CI containers), PostgreSQL is run as the ``postgres`` system
user because it refuses to run as root.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stack.services import pg_binary, weed_server_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _postgres_user() -> dict[str, str]:
    """Popen arguments that drop root to the ``postgres`` user (signals then reach postgres itself)."""
    if os.geteuid() == 0:
        return {"user": "postgres", "group": "postgres"}
    return {}


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temp dir; ``url`` points at database ``lookalike``."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls) -> PostgresServer:
        root = Path(tempfile.mkdtemp(prefix="lookalike-pg-"))
        server = cls(root=root, port=free_port())
        data = root / "data"
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            [pg_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, cwd=root, **_postgres_user(),
        )
        server._spawn()
        server.wait_ready()
        server.create_database("lookalike")
        return server

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [pg_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if probe.returncode == 0:
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("postgres exited: " + (self.root / "postgres.log").read_text())
            time.sleep(0.1)
        raise TimeoutError("postgres did not become ready")

    def url(self, database: str = "lookalike") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
             f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True,
        )
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT = "fast" shutdown: disconnects clients. SIGTERM ("smart") would wait
            # for every pooled connection a test process still holds.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start the same cluster on the same port (for recovery tests)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)
        self._spawn()
        self.wait_ready()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            [pg_binary("postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "postgres.log", "ab"),
            cwd=self.root, **_postgres_user(),
        )


class _SpawnedServer:
    """Stop (SIGTERM, then SIGKILL after ``stop_wait_seconds``), restart, and close (stop and
    remove the temp dir) for a server that ``_spawn`` starts as ``process`` in ``root``."""

    root: Path
    process: subprocess.Popen[bytes] | None
    stop_wait_seconds = 10.0

    def _spawn(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        _terminate(self.process, self.stop_wait_seconds)

    def restart(self) -> None:
        self.stop()
        self._spawn()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisServer(_SpawnedServer):
    """A redis-server without persistence in a temp dir."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls) -> RedisServer:
        root = Path(tempfile.mkdtemp(prefix="lookalike-redis-"))
        server = cls(root=root, port=free_port())
        server._spawn()
        return server

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=open(self.root / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"



def _terminate(process: subprocess.Popen[bytes] | None, wait_seconds: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``wait_seconds``."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(wait_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def weed_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports whose gRPC twins (weed listens on each
    port + 10000 too) are free as well."""
    for _ in range(1000):
        port = random.randint(20000, 45000)
        if all(_port_free(p) and _port_free(p + 10000) for p in range(port, port + count)):
            return port
    raise RuntimeError("no free ports for SeaweedFS")


@dataclass
class ObjectStoreServer(_SpawnedServer):
    """SeaweedFS (master, volume, filer and its S3 gateway) on loopback, data in a temp dir.

    Anonymous access (no identities configured); ``bucket`` exists once ``start`` returns.
    """

    root: Path
    s3_port: int
    bucket: str = "lookalike-test"
    process: subprocess.Popen[bytes] | None = None
    stop_wait_seconds = 3.0  # weed takes its time to stop cleanly; its data is a temp dir

    @classmethod
    def start(cls) -> ObjectStoreServer:
        server = cls(root=Path(tempfile.mkdtemp(prefix="lookalike-weed-")), s3_port=weed_ports())
        server._spawn()
        return server

    def _spawn(self) -> None:
        ports = {name: weed_ports() for name in ("master", "volume", "filer")}
        self.process = subprocess.Popen(
            weed_server_args(self.root, self.s3_port, (ports["master"], ports["volume"], ports["filer"])),
            stdout=open(self.root / "weed.log", "ab"), stderr=subprocess.STDOUT, cwd=self.root,
        )
        wait_for_port(self.s3_port, timeout=60)
        self._wait_bucket()

    def _wait_bucket(self, timeout: float = 60.0) -> None:
        """The S3 port opens before the filer and a volume are ready: until a write goes through,
        retry making the bucket and writing (then deleting) a probe object."""
        from core.artifacts.s3 import S3Store  # boto3: only the object-store tests pay for the import

        store = S3Store(self.bucket, "", endpoint_url=self.endpoint_url, region="us-east-1",
                        access_key_id="test", secret_access_key="test", timeout_seconds=5, attempts=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                store.prepare()
                store.client.put_object(Bucket=self.bucket, Key="ready-probe", Body=b"ok")
                store.client.delete_object(Bucket=self.bucket, Key="ready-probe")
                return
            except Exception:  # noqa: BLE001 - not ready yet (botocore's errors or the store's own)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

