"""``lookalike stack`` as a user runs it: up, serving, and stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.support.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_stack_command_starts_everything_and_stops_it_all_on_sigterm() -> None:
    root = Path(tempfile.mkdtemp(prefix="lookalike-stack-"))
    root.chmod(0o755)  # PostgreSQL runs as `postgres` when the tests run as root
    api_port, gunicorn_port = free_port(), free_port()
    env = {**os.environ, "LOOKALIKE_HOME": str(root / "home"), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "stack", "--api-port", str(api_port), "--gunicorn-port", str(gunicorn_port),
         "--postgres-port", str(free_port()),
         "--redis-port", str(free_port()), "--api-workers", "1", "--worker-concurrency", "1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until the supervisor says the stack is up
            output.append(line)
            if line.startswith("stack: up."):
                break
        assert any(line.startswith("stack: up.") for line in output), "".join(output[-40:])
        # The public port is nginx's; gunicorn answers on its own port behind it.
        through_nginx = requests.get(f"http://127.0.0.1:{api_port}/readyz", timeout=10)
        assert through_nginx.status_code == 200
        assert through_nginx.headers.get("Server", "").startswith("nginx")
        direct = requests.get(f"http://127.0.0.1:{gunicorn_port}/readyz", timeout=10)
        assert direct.status_code == 200 and not direct.headers.get("Server", "").startswith("nginx")
        pids = {int(m.group(2)) for line in output if (m := re.search(r"^(\w+) *\| .*started \(pid (\d+)\)", line))}
        assert len(pids) == 7  # postgres, redis, migrate, api, nginx, worker, beat
        logs = root / "home" / "stack" / "logs"
        assert {p.name for p in logs.iterdir()} == {f"{n}.log" for n in
                                                    ("postgres", "redis", "migrate", "api", "nginx", "worker", "beat")}

        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        output.append(rest)
        assert process.returncode == 0, "".join(output[-60:])
        assert "stack: stopped" in rest
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)]
        # Stopped in reverse order of starting: beat first, nginx before gunicorn, PostgreSQL last.
        stops = [m.group(1) for line in rest.splitlines() if (m := re.match(r"^(\w+) *\| .*\[stack\] stopping", line))]
        assert stops == ["beat", "worker", "nginx", "api", "redis", "postgres"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
