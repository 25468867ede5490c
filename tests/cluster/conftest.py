"""A multi-node Ray cluster on one machine and a local S3 server, shared by this package.

* ``s3`` — a real S3-compatible server (``moto`` in server mode) on 127.0.0.1: it stands in for
  AWS S3 / MinIO / GCS. Credentials and the endpoint reach every process through the standard
  environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``),
  exactly as on a cluster; nothing in scfm's configuration names them.
* ``ray_cluster`` — ``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of
  one CPU each, separate raylet processes, started after the S3 variables are set so every node
  inherits them. The session's local Ray (``ray_local``) is shut down for this package and
  started again afterwards with the same settings.
* ``tracking`` — a team MLflow for the whole package: real PostgreSQL (the Debian package;
  ``.ci/run`` installs it) behind ``mlflow server``, artifacts proxied to ``s3://…/mlflow``.
  Without PostgreSQL it falls back to sqlite and says so (the team test then skips).
* ``s3_corpus`` and ``drilled_run`` — the package's corpus on ``s3://`` (tracked) and its one
  pretraining run, which loses a node mid-run (the node-loss, object-store and team tests all
  inspect that run: one Ray Train run instead of three).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scfm import datasets
from scfm.corpus.build import BuildConfig
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import DirectorySource
from scfm.data.io import read_counts
from scfm.train.config import PretrainConfig
from tests.conftest import init_local_ray, tracking_store, tracking_uri
from tests.e2e.conftest import BIN, free_port, serving, wait_http

from .helpers import Background, read_reports, recording_train_loop, wait_for, wait_until

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


def postgres_bin() -> Path | None:
    """The PostgreSQL server binaries (Debian: /usr/lib/postgresql/<v>/bin), or None."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a server command; as root through the ``postgres`` user (the server refuses root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


NO_POSTGRES = (
    "PostgreSQL NOT INSTALLED: the team-MLflow end-to-end test did not run and the cluster tests "
    "track to sqlite. `apt-get install postgresql` (.ci/run does this) to run it."
)


@pytest.fixture(scope="package")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 with database ``mlflow``; yields (dsn, env),
    or None where PostgreSQL is not installed."""
    bindir = postgres_bin()
    if bindir is None:
        warnings.warn(NO_POSTGRES, stacklevel=1)
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="scfm-pg-"))  # not under pytest's 0700 root-only dirs
    password = secrets.token_hex(16)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pw", "postgres", "postgres")
    port = free_port()
    data = root / "data"
    _as_postgres(
        [str(bindir / "initdb"), "-D", str(data), "-U", "scfm", "--auth=scram-sha-256",
         f"--pwfile={root / 'pw'}"]
    )  # fmt: skip
    _as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "start",
         "-o", f"-h 127.0.0.1 -p {port} -k {root}"]
    )  # fmt: skip
    env = {"PGPASSWORD": password}
    try:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "scfm", "mlflow"],
            check=True,
            env=os.environ | env,
            timeout=60,
        )
        yield f"postgresql://scfm@127.0.0.1:{port}/mlflow", env
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def team_mlflow(postgres, s3, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1: PostgreSQL backend, artifacts proxied to s3://…/mlflow;
    yields (url, server process), or None without PostgreSQL."""
    if postgres is None:
        yield None
        return
    dsn, pg_env = postgres
    log = tmp_path_factory.mktemp("mlflow-team") / "server.log"
    port = free_port()
    env = (
        os.environ
        | s3.env
        | pg_env
        | {
            "MLFLOW_BACKEND_STORE_URI": dsn,  # no password in it: libpq reads PGPASSWORD
            "MLFLOW_ARTIFACTS_DESTINATION": s3.uri("mlflow"),
        }
    )
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with serving(cmd, log, f"{url}/health", env=env) as proc:
        yield url, proc


@pytest.fixture(scope="package")
def tracking(team_mlflow, tmp_path_factory) -> Iterator[str]:
    """MLFLOW_TRACKING_URI for the package: the team server (sqlite without PostgreSQL)."""
    if team_mlflow is None:
        with tracking_store(tmp_path_factory.mktemp("mlflow")) as uri:
            yield uri
    else:
        with tracking_uri(team_mlflow[0]) as uri:
            yield uri


QC = QCConfig(min_genes=50)


def corpus_cfg(output: str, root, **kw) -> BuildConfig:
    return BuildConfig(
        output=output,
        sources=[DirectorySource(root=str(root), name="lab")],
        qc=QC,
        block_cells=200,
        progress=False,
        **kw,
    )


def pretrain_cfg(corpus: str, storage: str, name: str, steps: int, **extra: str) -> PretrainConfig:
    overrides = {
        "model": "tiny",
        "data.corpus": corpus,
        "data.micro_batch_size": "4",
        "data.val_cells": "16",
        "train.global_batch_size": "8",
        "train.max_steps": str(steps),
        "train.warmup_steps": "1",
        "train.log_every": "1",
        "train.val_every": "100",
        "train.checkpoint_every": "2",
        "scale.num_workers": "2",
        "scale.cpus_per_worker": "1",  # one worker per 1-CPU node: the group spans both nodes
        "storage_path": storage,
        "name": name,
        "tracking.register_as": "",
    } | extra
    return PretrainConfig.load(overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="package")
def inputs(tmp_path_factory):
    """Two h5ad inputs of 600 Kang PBMC cells (3 blocks each) and a third held back for refresh."""
    kang = read_counts(datasets.fetch("kang2018"))
    root = tmp_path_factory.mktemp("inputs")
    kang[:600].write_h5ad(root / "a.h5ad")
    kang[600:1200].write_h5ad(root / "b.h5ad")
    spare = tmp_path_factory.mktemp("spare") / "c.h5ad"
    kang[1200:1500].write_h5ad(spare)
    return root, spare


@pytest.fixture(scope="package")
def s3_corpus(ray_cluster, s3, inputs, tracking):
    """A corpus built on the cluster straight into s3:// (tracked); returns (uri, build result)."""
    from scfm.corpus.build_report import build_and_log

    uri = s3.uri("corpus")
    result = build_and_log(corpus_cfg(uri, inputs[0], executor="ray"))
    assert result.exit_code == 0
    return uri, result


@dataclass
class DrilledRun:
    result: object  # the PretrainResult
    reports: list[dict]  # every report of every rank: node, rank, step, restored
    doomed: str  # the node removed while the last rank slept at step 3


def remove_node_of(cluster, node_id: str) -> None:
    (node,) = [n for n in worker_nodes(cluster) if n.node_id == node_id]
    cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="package")
def drilled_run(ray_cluster, s3, s3_corpus, tracking, tmp_path_factory) -> DrilledRun:
    """6 steps of the tiny model, one DDP worker per node, checkpoints under s3://…/ray/run-a,
    registered as ``scfm-team``; at step 3 the last rank's node is removed (its raylet and every
    worker process killed) and a replacement node joins, as an autoscaler would add one."""
    from scfm.storage import exists
    from scfm.train.pretrain import run_pretraining

    log_dir = tmp_path_factory.mktemp("reports")
    cfg = pretrain_cfg(
        s3_corpus[0], s3.uri("ray"), "run-a", 6, **{"tracking.register_as": "scfm-team"}
    )
    loop = recording_train_loop(str(log_dir), pause_at_step=3)
    train = Background(lambda: run_pretraining(cfg, max_failures=1, train_loop=loop))
    try:
        paused = wait_for("paused-*", log_dir, train, timeout=300)  # the last rank sleeps at step 3
        doomed = paused.name.removeprefix("paused-")
        # Ray Train commits a reported checkpoint when its controller has seen every rank's
        # report (a snapshot file in the run directory); only then does losing a node keep it
        snapshot = s3.uri("ray", "run-a", "checkpoint_manager_snapshot.json")
        wait_until(lambda: exists(snapshot), timeout=120)
        remove_node_of(ray_cluster, doomed)
        ensure_workers(ray_cluster)
        result = train.outcome(timeout=400)
    finally:
        ensure_workers(ray_cluster)
    return DrilledRun(result, read_reports(log_dir), doomed)
