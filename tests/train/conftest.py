"""A restartable ``mlflow server`` on 127.0.0.1 shared by this package's tests.

``test_ray_pretrain.py``'s shared run trains through an outage of it (killed and restarted);
``test_tracking_outage.py``, which runs after it, kills it again (a corpus build whose server
dies, a logger that finds it down). Tests that need it up use ``mlflow_server_up``, which
restarts it when an earlier test left it down.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tracking_uri
from tests.e2e.conftest import free_port, mlflow_server_cmd, wait_http


class Server:
    """A restartable ``mlflow server`` (same port, same sqlite store and artifact folder)."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            mlflow_server_cmd(self.root, self.port),
            stdout=open(self.root / "server.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.url}/health", timeout=90, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # an outage, not a clean shutdown
            self.proc.wait(timeout=20)
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None

    def ensure_up(self) -> str:
        """Start the server if it is down; its URL."""
        if not self.up:
            self.start()
        return self.url


@pytest.fixture(scope="package")
def mlflow_server(tmp_path_factory):
    """The package's server (started on first use, killed at the end of the package)."""
    s = Server(tmp_path_factory.mktemp("mlflow-outage"))
    yield s
    s.stop()


@pytest.fixture
def mlflow_server_up(mlflow_server):
    """The server, (re)started if down, as this test's ``MLFLOW_TRACKING_URI``."""
    with tracking_uri(mlflow_server.ensure_up()):
        yield mlflow_server
