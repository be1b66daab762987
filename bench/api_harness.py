"""Helpers of bench/bench_api.py: run `lookalike serve`, time requests, generate load, read memory."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ----------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, workers: int, log: Path,
                 extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """``lookalike serve`` on a free port, once /readyz answers; ``extra_env`` adds LOOKALIKE_* settings."""
    port = free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(home), "LANG": "C.UTF-8",
           "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736",
           "LOOKALIKE_HOME": str(home), "LOOKALIKE_LOG_LEVEL": "WARNING", "LOOKALIKE_TORCH_THREADS": "1",
           **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--bind", f"127.0.0.1:{port}",
                             "--workers", str(workers)], cwd=REPO, env=env, start_new_session=True,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.5)
    raise TimeoutError(log.read_text()[-3000:])


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


def server_timing(header: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+);dur=([0-9.]+)", header)}


def sequential(port: int, paths: list[str], method: str = "GET", body: bytes | None = None,
               headers: dict | None = None) -> tuple[list[float], list[dict[str, float]]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, phases = [], []
    for path in paths:
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        assert response.status == 200, (response.status, path)
        phases.append(server_timing(response.getheader("Server-Timing", "")))
    conn.close()
    return latencies, phases


# ----------------------------------------------------------------------------- load
def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of the processes so far (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def wrk_run(port: int, n: int, connections: int, seconds: int, k: int = 10) -> dict:
    script = Path(tempfile.mkdtemp()) / "ids.lua"
    script.write_text(f"math.randomseed(7)\nrequest = function()\n  return wrk.format('GET', "
                      f"string.format('/api/v1/items/b%07d/similar?k={k}', math.random(0, {n - 1})))\nend\n")
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s",
                          str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def latency(label: str) -> float:
        m = re.search(rf"{label}%\s+([0-9.]+)(us|ms|s)", out)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)), "p50": latency("50"),
            "p99": latency("99"), "errors": int(errors.group(1)) if errors else 0, "tool": "wrk"}


def python_load(port: int, n: int, connections: int, seconds: int, k: int = 10) -> dict:
    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    rng = np.random.default_rng(7)

    def loop(seed: int) -> None:
        r = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            conn.request("GET", f"/api/v1/items/b{int(r.integers(n)):07d}/similar?k={k}")
            response = conn.getresponse()
            response.read()
            lat.append((time.perf_counter() - t0) * 1000)
            errors[0] += response.status != 200

    threads = [threading.Thread(target=loop, args=(int(rng.integers(1 << 30)),)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rps": len(lat) / seconds, "p50": pct(lat, 50), "p99": pct(lat, 99), "errors": errors[0],
            "tool": "python threads"}


# ----------------------------------------------------------------------------- memory
def memory_of(pid: int, index_file: Path) -> dict[str, float]:
    rollup = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in open(f"/proc/{pid}/smaps_rollup")
              if line.split(":")[0] in {"Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
                                        "Private_Dirty"}}
    index = {"Rss": 0.0, "Shared_Clean": 0.0, "Private_Clean": 0.0}
    inside = False
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(index_file))
        elif inside and line.split(":")[0] in index:
            index[line.split(":")[0]] += int(line.split()[1]) / 1024
    return {**rollup, **{f"index_{k}": v for k, v in index.items()}}


