"""``scfm finetune | evaluate | predict scad`` end to end: a Ray Tune sweep with MLflow parent and
child runs, the comparison table checked against scikit-learn, predictions written into a user's
AnnData, and the errors of bad input (real Ray, real MLflow, real GDSC data)."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from scfm.cli import app

runner = CliRunner()
SMALL = ["--max-genes", "200", "--proxy-lines", "3", "--cells-per-line", "12"]


def test_cli_registers_scad_and_stays_torch_free():
    code = (
        "import sys, scfm.cli; "
        "assert not {'torch', 'ray', 'sklearn'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for group in ("evaluate", "finetune", "predict"):
        result = runner.invoke(app, [group, "scad", "--help"])
        assert result.exit_code == 0 and "--" in result.output, result.output


def test_bad_input_stops_with_a_clear_message(tmp_path):
    result = runner.invoke(app, ["evaluate", "scad", "--drug", "TAE684", "--no-mlflow"])
    assert result.exit_code == 1 and "close names: NVP-TAE684" in result.output
    result = runner.invoke(
        app, ["evaluate", "scad", "--drug", "Sorafenib", "--min-per-class", "30", "--no-mlflow"]
    )
    assert result.exit_code == 1 and "27 sensitive and 355 resistant" in result.output
    cells = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    cells.var_names = ["CD3E", "MS4A1", "LYZ"]
    cells.write_h5ad(tmp_path / "cells.h5ad")
    result = runner.invoke(
        app, ["evaluate", "scad", "--drug", "PLX4720", "--target", str(tmp_path / "cells.h5ad")]
    )
    assert result.exit_code == 1 and "--label-key" in result.output


@pytest.mark.slow
def test_finetune_then_predict(tmp_path, ray_local, mlflow_uri):
    out = tmp_path / "ft"
    result = runner.invoke(
        app,
        [
            "finetune",
            "scad",
            "--drug",
            "PLX4720",
            "--input",
            "expression",
            *SMALL,
            "--num-samples",
            "2",
            "--max-epochs",
            "2",
            "--grace-period",
            "1",
            "--register-as",
            "test-scad-head",
            "--out",
            str(out),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    parents = [r for r in runs if r.data.tags.get("scfm.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("scfm.sweep") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert {"best.lr", "best.adv_weight", "best.h_dim"} <= set(parents[0].data.params)
    assert parents[0].data.tags["scfm.target"] == "proxy"
    metrics = json.loads((out / "test_metrics.json").read_text())
    preds = pd.read_csv(out / "test_predictions.csv")
    y = (preds["label"] == "sensitive").to_numpy()
    assert metrics["test_auroc"] == pytest.approx(roc_auc_score(y, preds["p_sensitive"]))
    assert metrics["model_uri"] == "models:/test-scad-head/1" and metrics["proxy"]
    assert client.get_run(parents[0].info.run_id).data.metrics["test_auroc"] == pytest.approx(
        metrics["test_auroc"]
    )
    # the registered head scores a user's AnnData (here: cells of the same proxy lines)
    from scfm.tasks.scad_data import ProxyConfig, load_source, make_proxy_target
    from scfm.tasks.scad_eval import ScadSourceConfig

    source = load_source("PLX4720", expression=ScadSourceConfig(max_genes=200).load_expression())
    _, target = make_proxy_target(source, ProxyConfig(3, 3, cells_per_line=12, seed=0))
    cells = ad.AnnData(target.X, obs=target.adata.obs[["cell_line"]].copy())
    cells.var_names = target.adata.var_names
    cells.write_h5ad(tmp_path / "cells.h5ad")
    result = runner.invoke(
        app,
        [
            "predict",
            "scad",
            "--model",
            "models:/test-scad-head/1",
            "--h5ad",
            str(tmp_path / "cells.h5ad"),
            "--group-key",
            "cell_line",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    scored = ad.read_h5ad(tmp_path / "cells.scad.h5ad")
    p = scored.obs["scad_sensitivity"].to_numpy()
    assert p.shape == (72,) and np.all((p > 0) & (p < 1))
    assert scored.uns["scad"]["drug"] == "PLX-4720" and scored.uns["scad"]["input"] == "expression"
    assert "cells predicted sensitive" in result.output


@pytest.mark.slow
def test_evaluate_table_matches_scikit_learn(tmp_path, mlflow_uri):
    out = tmp_path / "ev"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "scad",
            "--drug",
            "PLX4720",
            *SMALL,
            "--seeds",
            "2",
            "--method",
            "scfm_scad",
            "--method",
            "expression_scad",
            "--method",
            "logistic",
            "--max-epochs",
            "3",
            "--lr",
            "0.01",
            "--out",
            str(out),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "proxy target" in result.output
    preds = pd.read_csv(out / "predictions.csv")
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert len(per_seed) == 6  # 3 methods × 2 seeds
    for r in per_seed.itertuples():
        sub = preds[(preds["seed"] == r.seed) & (preds["method"] == r.method)]
        y = (sub["label"] == "sensitive").to_numpy()
        assert r.auroc == pytest.approx(roc_auc_score(y, sub["p_sensitive"]), abs=1e-12)
        assert r.auprc == pytest.approx(average_precision_score(y, sub["p_sensitive"]), abs=1e-12)
    table = pd.read_csv(out / "comparison.csv")
    lr = per_seed[per_seed["method"] == "logistic regression on raw expression"]["auroc"]
    row = table[table["method"] == "logistic regression on raw expression"].iloc[0]
    assert row["auroc_mean"] == pytest.approx(lr.mean()) and row["auroc_sd"] == pytest.approx(
        lr.std()
    )
    assert "scfm random-init (tiny) + SCAD" in set(table["method"])
    assert "Proxy target" in (out / "comparison.md").read_text()
    for name in ("auroc.png", "sensitivity.png", "sensitivity_by_group.png"):
        assert (out / name).stat().st_size > 10_000
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("evaluate").experiment_id])[0]
    assert run.data.tags["scfm.task"] == "scad" and run.data.tags["scfm.target"] == "proxy"
    key = "plx4720.logistic_regression_on_raw_expression.auroc_mean"
    assert run.data.metrics[key] == pytest.approx(row["auroc_mean"])
