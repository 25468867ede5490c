"""A multi-node Ray cluster on one machine and a local S3 server, shared by this package.

* ``s3`` — a real S3-compatible server (``moto`` in server mode) on 127.0.0.1: it stands in for
  AWS S3 / MinIO / GCS. Credentials and the endpoint reach every process through the standard
  environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``),
  exactly as on a cluster; nothing in scfm's configuration names them.
* ``ray_cluster`` — ``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of
  one CPU each, separate raylet processes, started after the S3 variables are set so every node
  inherits them. The session's local Ray (``ray_local``) is shut down for this package and
  started again afterwards with the same settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import init_local_ray
from tests.e2e.conftest import BIN, free_port, wait_http

BUCKET = "scfm-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "scfm-test-key",
    "AWS_SECRET_ACCESS_KEY": "scfm-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
WORKER_NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024**2}


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@pytest.fixture(scope="package")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    """``moto_server`` on a free 127.0.0.1 port with bucket ``scfm-test``; env vars point at it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = S3_ENV | {"AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    try:
        wait_http(f"{endpoint}/moto-api/", timeout=60, proc=proc)
        os.environ.update(env)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, BUCKET, env)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.fixture(scope="package")
def ray_cluster(s3):
    """A head (0 CPUs) + 2 worker nodes (1 CPU each) as separate processes; the driver joins."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.data import DataContext

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": 100 * 1024**2,
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(**WORKER_NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        DataContext.get_current().enable_progress_bars = False
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:
            init_local_ray()


def worker_nodes(cluster) -> list:
    """The cluster's live worker nodes (not the head)."""
    return [n for n in cluster.worker_nodes if n.remaining_processes_alive()]


def ensure_workers(cluster, n: int = 2) -> None:
    """Add worker nodes until ``n`` are alive (tests that remove one put one back)."""
    while len(worker_nodes(cluster)) < n:
        cluster.add_node(**WORKER_NODE)
    cluster.wait_for_nodes()
