"""A team MLflow: real PostgreSQL + `mlflow server` (artifacts proxied to local S3), end to end.

PostgreSQL is the Debian package (``.ci/run`` installs it when missing); the server gets its
backend URI and the database password from the environment (``MLFLOW_BACKEND_STORE_URI`` without
a password, ``PGPASSWORD``), never on its command line. Clients talk HTTP only and hold no S3
credentials: the server writes artifacts to ``s3://scfm-test/mlflow``. The server is the
package's ``tracking`` (conftest.py): the package's corpus build and pretraining run (which lost a
node on the way) were tracked there; this test adds a fine-tuning sweep and reads it all back.
"""

from __future__ import annotations

import mlflow
import pytest
from typer.testing import CliRunner

from .conftest import NO_POSTGRES

pytestmark = pytest.mark.slow


def test_corpus_pretrain_finetune_tracked_on_postgres_and_s3(
    team_mlflow, postgres, tracking, s3, s3_corpus, drilled_run, inputs, tmp_path
):
    import boto3

    from scfm.cli import app

    if team_mlflow is None:
        pytest.skip(NO_POSTGRES)
    url, proc = team_mlflow
    secret = postgres[1]["PGPASSWORD"]
    assert secret not in " ".join(proc.args) and "PGPASSWORD" not in " ".join(proc.args)
    assert tracking == url

    # the package's corpus build and pretraining run (registered as scfm-team) were tracked here;
    # the fine-tuning sweep on that model adds the third stage
    pre = drilled_run.result
    assert pre.model_uri == "models:/scfm-team/1"
    h5ad = inputs[0] / "a.h5ad"  # 600 labelled Kang cells
    res = CliRunner().invoke(
        app,
        ["finetune", "annotation", "--h5ad", str(h5ad), "--label-key", "cell_type",
         "--model", pre.model_uri, "--smoke-test", "--register-as", "scfm-team-head",
         "--out", str(tmp_path / "ft")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output

    # read everything back through the client, from the server
    client = mlflow.MlflowClient(tracking_uri=url)
    assert client._tracking_client.store.__class__.__name__ == "RestStore"
    pre_run = client.get_run(pre.run_id)
    version = int(pre_run.data.tags["scfm.corpus_version"])
    (corpus_run,) = client.search_runs(
        [client.get_experiment_by_name("corpus").experiment_id],
        f"tags.`scfm.corpus_version` = '{version}'",
    )
    ft_runs = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    parent = [r for r in ft_runs if r.data.tags.get("scfm.sweep") == "parent"]
    trials = [r for r in ft_runs if r.data.tags.get("scfm.sweep") == "trial"]
    assert len(parent) == 1 and len(trials) == 4
    # links: corpus build → pretraining run → registered model → fine-tuning sweep
    if version == 1:
        assert s3_corpus[1].manifest.mlflow_run_id == corpus_run.info.run_id
    assert pre_run.data.tags["scfm.corpus_run_id"] == corpus_run.info.run_id
    assert pre_run.data.tags["scfm.corpus_uri"] == s3_corpus[0]
    (registered,) = client.search_model_versions("name='scfm-team'")
    assert registered.run_id == pre_run.info.run_id
    assert parent[0].data.params["backbone.source"] == pre.model_uri
    assert all(t.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for t in trials)
    (head,) = client.search_model_versions("name='scfm-team-head'")
    assert head.run_id == parent[0].info.run_id
    # every step reached the server from the rank-0 worker (steps 3 and up twice: the node loss)
    steps = [m.step for m in client.get_metric_history(pre_run.info.run_id, "loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6]
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
