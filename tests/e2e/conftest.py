"""Real services on 127.0.0.1 for end-to-end tests: an MLflow server and a Ray head node.

Both are package-scoped: they stop once this package's tests are done, so their processes do not
take CPU from the rest of the suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@contextmanager
def serving(
    cmd: list[str],
    log: Path,
    health: str,
    *,
    timeout: float = 120,
    stop_timeout: float = 2,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Run a server in its own process group, yield once ``health`` answers, then stop the group
    (:func:`stop_group`: ``stop_timeout`` seconds for a graceful stop, then SIGKILL; uvicorn's
    graceful stop waits up to ~20 s for idle keep-alive connections, which tests do not need)."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so the whole process group (gunicorn/uvicorn workers) stops
    )
    try:
        wait_http(health, timeout, proc=proc)
        yield proc
    finally:
        stop_group(proc.pid, stop_timeout)
        proc.wait(timeout=10)  # reap the leader


def mlflow_server_cmd(root: Path, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1:``port``: sqlite store and served artifacts in ``root``."""
    return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]  # fmt: skip


@pytest.fixture(scope="package")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a sqlite backend and served artifacts; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving(mlflow_server_cmd(root, port), root / "server.log", f"{url}/health", timeout=90):
        yield url


@pytest.fixture(scope="package")
def ray_head():
    """``ray start --head`` on 127.0.0.1 with the job server; yields the dashboard address."""
    # a folder straight under the system temp folder: Ray's socket paths under it must stay
    # within AF_UNIX's 107 bytes, which pytest's nested temp folders can exceed (pytest-xdist's
    # per-worker folders did)
    temp = Path(tempfile.mkdtemp(prefix="scfm-rh-"))
    dash = free_port()
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # its own process group: every daemon it starts (GCS, raylet, dashboard and its agents, the
    # client server) stays in it, whatever name the process gives itself later
    start = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            # Fixed-default ports would clash with the session's own local Ray.
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "true",
            "--temp-dir",
            str(temp),
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        output, _ = start.communicate(timeout=120)
        assert start.returncode == 0, output.decode(errors="replace")
        wait_http(f"{address}/api/version", timeout=60)
        yield address
    finally:
        stop_group(start.pid)
        shutil.rmtree(temp, ignore_errors=True)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (field 5 of ``/proc/<pid>/stat``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_group(pgid: int, timeout: float = 5) -> None:
    """Stop every process of group ``pgid`` (``ray stop`` would also stop the session's local
    Ray): SIGTERM, then SIGKILL for what is left after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.2)
