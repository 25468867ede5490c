"""`scfm finetune gears` end to end: a 2-trial Ray Tune sweep (real local Ray) of the GEARS
head on a Papalexi subset, MLflow parent and child runs (real sqlite store), the best head saved
(weights_only), registered and tested on the held-out perturbations."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from scfm.tasks.base import HEAD_FILE
from tests.tasks.perturb_fixtures import COMMON, make_app, write_subset

runner = CliRunner()
APP = make_app()


@pytest.fixture(scope="module")
def subset_h5ad(tmp_path_factory):
    return write_subset(tmp_path_factory.mktemp("perturb"))


@pytest.mark.slow
def test_finetune_gears_cli(subset_h5ad, tmp_path, ray_local, mlflow_uri):
    out = tmp_path / "ft"
    args = ["finetune", "gears", "--h5ad", str(subset_h5ad), *COMMON, "--smoke-test"]
    result = runner.invoke(APP, [*args, "--register-as", "test-gears-head", "--out", str(out)])
    assert result.exit_code == 0, result.output

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("finetune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("scfm.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("scfm.sweep") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    histories = [client.get_metric_history(c.info.run_id, "val_mse_de") for c in children]
    best = min(m.value for h in histories for m in h)
    assert parent.data.metrics["best_val_mse_de"] == pytest.approx(best)
    assert {"best.lr", "best.hidden", "best.gene_layers", "best.pert_layers"} <= set(
        parent.data.params
    )

    metrics = json.loads((out / "test_metrics.json").read_text())
    per_pert = pd.read_csv(out / "test_per_perturbation.csv")
    assert metrics["mse_de"] == pytest.approx(per_pert["mse_de"].mean())
    assert parent.data.metrics["test_mse_de"] == pytest.approx(metrics["mse_de"])
    assert set(per_pert["subgroup"]) == {"unseen_single"}
    payload = torch.load(out / "model" / HEAD_FILE, weights_only=True)
    assert payload["config"]["hidden"] == int(parent.data.params["best.hidden"])
    assert client.get_model_version("test-gears-head", "1").run_id == parent.info.run_id
