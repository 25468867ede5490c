"""``scfm finetune deepcdr``: a Ray Tune sweep of the DeepCDR head (ASHA), MLflow parent and
child runs, the best head tested and registered (real Ray, real MLflow)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from tests.tasks.test_deepcdr import SUBSET, cli_app

runner = CliRunner()


@pytest.mark.slow
def test_finetune_cli_sweep(tmp_path, ray_local, mlflow_uri):
    out = tmp_path / "ft"
    result = runner.invoke(
        cli_app(),
        [
            "finetune",
            "deepcdr",
            *SUBSET,
            "--cell-input",
            "expression",
            "--num-samples",
            "2",
            "--max-epochs",
            "2",
            "--grace-period",
            "1",
            "--register-as",
            "test-deepcdr-head",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("finetune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("scfm.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("scfm.sweep") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert {"best.lr", "best.dropout", "best.cell_hidden"} <= set(parents[0].data.params)
    metrics = json.loads((out / "test_metrics.json").read_text())
    preds = pd.read_csv(out / "test_predictions.csv")
    assert metrics["test_pearson"] == pytest.approx(
        stats.pearsonr(preds["ln_ic50"], preds["prediction"])[0], rel=1e-6
    )
    assert parents[0].data.metrics["best_val_rmse"] > 0
    assert metrics["model_uri"] == "models:/test-deepcdr-head/1"
    assert client.get_run(parents[0].info.run_id).data.metrics["test_rmse"] == pytest.approx(
        metrics["test_rmse"]
    )
