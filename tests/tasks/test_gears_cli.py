"""`scfm evaluate gears` end to end on a subset of the Papalexi screen with a real sqlite MLflow
store, and its errors for bad inputs. The commands are registered in a typer app built here, the
way ``scfm.tasks.cli`` registers them (``make_app``)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from scfm.tasks.perturb_data import log_normalize
from tests.tasks.perturb_fixtures import COMMON, make_app, papalexi_subset, write_subset

runner = CliRunner()
APP = make_app()


@pytest.fixture(scope="module")
def subset_h5ad(tmp_path_factory):
    return write_subset(tmp_path_factory.mktemp("perturb"))


def test_evaluate_gears_cli(subset_h5ad, tmp_path, mlflow_uri):
    out = tmp_path / "out"
    args = ["evaluate", "gears", "--h5ad", str(subset_h5ad), *COMMON, "--seeds", "1,2"]
    result = runner.invoke(APP, [*args, "--max-epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lowest top-20 DE MSE" in result.output

    table = pd.read_csv(out / "comparison.csv")
    assert dict(zip(table["method"], table["kind"], strict=True)) == {
        "no change (control mean)": "baseline",
        "mean training effect": "baseline",
        "linear (Ahlmann-Eltze, PCA + ridge)": "baseline",
        "GEARS + scfm random-init (tiny)": "control",
        "GEARS (learned gene embeddings)": "gears",
    }
    assert (table["n_seeds"] == 2).all()
    per_pert = pd.read_csv(out / "per_perturbation.csv")
    changes = pd.read_csv(out / "changes.csv")
    summary = json.loads((out / "splits.json").read_text())
    for split in summary["splits"]:
        assert not set(split["test"]) & set(split["train"] + split["val"])
        rows = per_pert[per_pert["seed"] == split["seed"]]
        assert set(rows["perturbation"]) == set(split["test"])
    # per-perturbation metrics from the saved predicted / observed changes on the DE genes
    for (method, seed, pert), g in changes.groupby(["method", "seed", "perturbation"]):
        row = per_pert[
            (per_pert["method"] == method)
            & (per_pert["seed"] == seed)
            & (per_pert["perturbation"] == pert)
        ].iloc[0]
        assert len(g) == 20
        err = g["pred_change"] - g["true_change"]
        assert row["mse_de"] == pytest.approx(np.mean(err**2), rel=1e-4)
        if g["pred_change"].std() > 0:
            r = stats.pearsonr(g["pred_change"], g["true_change"])[0]
            assert row["pearson_delta_de"] == pytest.approx(r, rel=1e-4)
    # the comparison averages the per-seed means of the per-perturbation metrics
    for method, g in per_pert.groupby("method"):
        expected = g.groupby("seed")["mse_de"].mean().mean()
        assert table.set_index("method").loc[method, "mse_de"] == pytest.approx(expected)
    assert np.isnan(table.set_index("method").loc["no change (control mean)", "pearson_delta"])
    for png in ("comparison.png", "changes.png"):
        assert (out / png).stat().st_size > 10_000
    md = (out / "comparison.md").read_text()
    assert "learned vector" in md and "| method | kind | top-20 DE MSE" in md

    runs = mlflow.search_runs(experiment_names=["evaluate"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.scfm.task"] == "gears"
    assert run["metrics.gears_learned_gene_embeddings.mse_de"] == pytest.approx(
        table.set_index("method").loc["GEARS (learned gene embeddings)", "mse_de"]
    )
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "evaluation")}
    assert {"evaluation/comparison.csv", "evaluation/per_perturbation.csv"} <= artifacts


def test_bad_inputs_stop_with_the_fix(subset_h5ad, tmp_path):
    base = ["evaluate", "gears", *COMMON, "--no-mlflow", "--out", str(tmp_path)]
    result = runner.invoke(APP, [*base, "--h5ad", str(subset_h5ad), "--control-label", "ctrl"])
    assert result.exit_code == 1
    assert "'ctrl' does not occur" in result.output and "'non-targeting'" in result.output

    # Hallmark alone lacks several targets: they are listed, with the fix
    result = runner.invoke(APP, [*base, "--h5ad", str(subset_h5ad), "--gene-sets", "hallmark"])
    assert result.exit_code == 1
    assert "genes not in the perturbation graph" in result.output
    assert "ATF2 (ATF2)" in result.output and "--drop-invalid" in result.output

    adata = papalexi_subset(n_perturbations=10, cells=60, controls=300)
    adata.X = log_normalize(adata.X)
    normalized = tmp_path / "normalized.h5ad"
    adata.write_h5ad(normalized)
    result = runner.invoke(APP, [*base, "--h5ad", str(normalized)])
    assert result.exit_code == 1 and "looks log-normalized" in result.output
