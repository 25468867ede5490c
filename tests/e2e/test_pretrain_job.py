"""`ray job submit -- python workflows/pretrain.py` against a real Ray head and MLflow server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from scfm import datasets

from .conftest import BIN

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_pretrain_job_succeeds_and_is_tracked(ray_head, mlflow_server, kang_corpus, tmp_path):
    # The job runs from an uploaded copy of the repo: point it at the data explicitly.
    env_vars = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "RAY_AUTH_MODE": "disabled",
        "SCFM_DATA_DIR": str(datasets.fetch("vocab").parents[1]),
    }
    runtime_env = {"env_vars": env_vars}
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        ray_head,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        sys.executable,
        "workflows/pretrain.py",
        "--smoke-test",
        "--corpus",
        kang_corpus,
        "--set",
        f"storage_path={tmp_path / 'ray'}",
        "--set",
        "tracking.register_as=scfm-e2e",
        "--set",
        "tracking.experiment=pretrain-e2e",
    ]
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    for _ in range(12):  # the head's job agent can start after its dashboard answers
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    (tmp_path / "job.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    job_id = re.search(r"raysubmit_\w+", proc.stdout + proc.stderr).group(0)
    assert JobSubmissionClient(ray_head).get_job_status(job_id) == JobStatus.SUCCEEDED

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("pretrain-e2e")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    (version,) = client.search_model_versions("name='scfm-e2e'")
    assert version.run_id == run.info.run_id
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pt", "model/train_state.pt", "model/genes.txt"} <= files
