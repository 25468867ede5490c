"""A team MLflow: real PostgreSQL + `mlflow server` (artifacts proxied to local S3), end to end.

PostgreSQL is the Debian package (``.ci/run`` installs it when missing); the server gets its
backend URI and the database password from the environment (``MLFLOW_BACKEND_STORE_URI`` without
a password, ``PGPASSWORD``), never on its command line. Clients talk HTTP only and hold no S3
credentials: the server writes artifacts to ``s3://scfm-test/mlflow``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from scfm import datasets
from scfm.data.io import read_counts
from tests.e2e.conftest import BIN, free_port, serving

pytestmark = pytest.mark.slow


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


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 with database ``mlflow``; yields (dsn, env)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL NOT INSTALLED: the team-MLflow end-to-end test did not run. "
            "`apt-get install postgresql` (.ci/run does this) to run it."
        )
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


@pytest.fixture(scope="module")
def team_mlflow(postgres, s3, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1: PostgreSQL backend, artifacts proxied to s3://…/mlflow."""
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
    # uvicorn's graceful stop can take 20 s: not needed here
    with serving(cmd, log, f"{url}/health", env=env, stop_timeout=5) as proc:
        yield url, proc


def test_corpus_pretrain_finetune_tracked_on_postgres_and_s3(
    team_mlflow, postgres, s3, ray_cluster, tmp_path, monkeypatch
):
    import boto3

    from scfm.corpus.build import BuildConfig
    from scfm.corpus.build_report import build_and_log
    from scfm.corpus.sources import H5ADSource
    from scfm.train.config import SMOKE_TEST_OVERRIDES, PretrainConfig
    from scfm.train.pretrain import run_pretraining

    url, proc = team_mlflow
    secret = postgres[1]["PGPASSWORD"]
    assert secret not in " ".join(proc.args) and "PGPASSWORD" not in " ".join(proc.args)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    kang = read_counts(datasets.fetch("kang2018"))
    h5ad = tmp_path / "kang600.h5ad"
    kang[:600].write_h5ad(h5ad)

    # 1. corpus build (on s3, tracked), 2. pretraining (registered), 3. a fine-tuning sweep
    corpus_uri = s3.uri("team", "corpus")
    built = build_and_log(
        BuildConfig(
            output=corpus_uri,
            sources=[H5ADSource(paths=[str(h5ad)], name="kang")],
            block_cells=300,
            executor="ray",
            progress=False,
        )
    )
    cfg = PretrainConfig.load(
        overrides=[
            *SMOKE_TEST_OVERRIDES,
            f"data.corpus={corpus_uri}",
            f"storage_path={s3.uri('team', 'ray')}",
            "name=team-pretrain",
            "tracking.register_as=scfm-team",
        ]
    )
    pre = run_pretraining(cfg)
    assert pre.model_uri == "models:/scfm-team/1"
    out = tmp_path / "ft"
    from scfm.cli import app

    res = CliRunner().invoke(
        app,
        ["finetune", "annotation", "--h5ad", str(h5ad), "--label-key", "cell_type",
         "--model", pre.model_uri, "--smoke-test", "--register-as", "scfm-team-head",
         "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output

    # read everything back through the client, from the server
    client = mlflow.MlflowClient(tracking_uri=url)
    assert client._tracking_client.store.__class__.__name__ == "RestStore"
    (corpus_run,) = client.search_runs([client.get_experiment_by_name("corpus").experiment_id])
    (pre_run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    ft_runs = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    parent = [r for r in ft_runs if r.data.tags.get("scfm.sweep") == "parent"]
    trials = [r for r in ft_runs if r.data.tags.get("scfm.sweep") == "trial"]
    assert len(parent) == 1 and len(trials) == 4
    # links: corpus build → pretraining run → registered model → fine-tuning sweep
    assert built.manifest.mlflow_run_id == corpus_run.info.run_id
    assert pre_run.data.tags["scfm.corpus_run_id"] == corpus_run.info.run_id
    assert pre_run.data.tags["scfm.corpus_uri"] == corpus_uri
    (version,) = client.search_model_versions("name='scfm-team'")
    assert version.run_id == pre_run.info.run_id
    assert parent[0].data.params["backbone.source"] == pre.model_uri
    assert all(t.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for t in trials)
    (head,) = client.search_model_versions("name='scfm-team-head'")
    assert head.run_id == parent[0].info.run_id
    assert [m.step for m in client.get_metric_history(pre_run.info.run_id, "loss")] == [1, 2, 3, 4]
    # artifacts went through the server into the S3 bucket, under the runs' ids
    assert pre_run.info.artifact_uri.startswith("mlflow-artifacts:")
    files = {a.path for a in client.list_artifacts(pre_run.info.run_id, "model")}
    assert {"model/model.pt", "model/train_state.pt"} <= files
    keys = [
        o["Key"]
        for page in boto3.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=s3.bucket, Prefix="mlflow/")
        for o in page.get("Contents", [])
    ]
    assert any(pre_run.info.run_id in k and k.endswith("model/model.pt") for k in keys)
    assert any(parent[0].info.run_id in k for k in keys)
