"""A 4-trial Ray Tune sweep of the annotation head through `scfm finetune annotation`: ASHA,
MLflow parent and child runs, the best head saved (weights_only) and registered."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from scfm import datasets
from scfm.cli import app
from scfm.data.io import read_counts
from scfm.tasks.base import HEAD_FILE

runner = CliRunner()


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory):
    """300 pbmc68k cells (seeded) with raw counts."""
    adata = read_counts(datasets.fetch("pbmc68k_counts"))
    keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, 300, replace=False))
    path = tmp_path_factory.mktemp("small") / "pbmc68k_300.h5ad"
    adata[keep].copy().write_h5ad(path)
    return path


@pytest.mark.slow
def test_finetune_sweep_logs_parent_and_children(small_h5ad, tmp_path, ray_local, mlflow_uri):
    out = tmp_path / "ft"
    result = runner.invoke(
        app,
        [
            "finetune",
            "annotation",
            "--h5ad",
            str(small_h5ad),
            "--label-key",
            "bulk_labels",
            "--smoke-test",
            "--register-as",
            "test-annotation-head",
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
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    # every trial logged its validation metric per epoch; ASHA may stop some after epoch 1
    histories = [client.get_metric_history(c.info.run_id, "val_macro_f1") for c in children]
    assert all(1 <= len(h) <= 3 for h in histories)
    best_trial = max(max(m.value for m in h) for h in histories)
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(best_trial)
    assert {"best.lr", "best.hidden_dim", "best.dropout"} <= set(parent.data.params)
    assert parent.data.params["sweep.num_samples"] == "4"

    # the test evaluation of the best head, checked against scikit-learn
    preds = pd.read_csv(out / "test_predictions.csv")
    metrics = json.loads((out / "test_metrics.json").read_text())
    classes = pd.read_csv(out / "classes.csv")
    scored = classes.loc[classes["status"] == "ok", "class"].tolist()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(preds["label"], preds["prediction"]))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(
            preds["label"], preds["prediction"], labels=scored, average="macro", zero_division=0
        )
    )
    assert parent.data.metrics["test_macro_f1"] == pytest.approx(metrics["macro_f1"])

    # best model: a weights_only checkpoint, logged on the parent run and registered
    payload = torch.load(out / "model" / HEAD_FILE, weights_only=True)
    assert payload["config"]["lr"] == pytest.approx(float(parent.data.params["best.lr"]))
    version = client.get_model_version("test-annotation-head", "1")
    assert version.run_id == parent.info.run_id
    assert metrics["model_uri"] == "models:/test-annotation-head/1"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and trials["best_val_macro_f1"].max() == pytest.approx(best_trial)


def test_workflow_entry_point_shows_the_finetune_options(capsys):
    from workflows.finetune import main

    with pytest.raises(SystemExit) as exc:
        main(["annotation", "--help"])
    assert exc.value.code == 0
    assert "--num-samples" in capsys.readouterr().out
