"""`scfm evaluate annotation` on a real-world-messy file: Ensembl ids, counts in a layer with
log-normalized X, missing labels, a rare class; and the non-count error / opt-in fallback."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from scfm import datasets
from scfm.cli import app
from scfm.data.io import read_counts
from scfm.tasks.baselines import log_normalize

runner = CliRunner()
N_MISSING = 15 + 5 + 9  # NaN labels, empty labels, and the CD34+ cells made unlabelled


@pytest.fixture(scope="module")
def messy_h5ad(tmp_path_factory):
    """pbmc68k counts in layers['counts'], log-normalized X, Ensembl ids, messy labels."""
    adata = read_counts(datasets.fetch("pbmc68k_counts"))
    id2name = pd.read_csv(datasets.fetch("gencode_id2name"), header=None, names=["id", "name"])
    first_id = id2name.drop_duplicates("name").set_index("name")["id"]
    names = adata.var_names.to_numpy()
    ids = [first_id.get(n, n) for n in names]
    assert sum(i.startswith("ENSG") for i in ids) > 600
    adata.var_names = pd.Index(ids)
    adata.var_names_make_unique()
    adata.layers["counts"] = adata.X.copy()
    adata.X = log_normalize(adata.X)
    labels = adata.obs["bulk_labels"].astype(object).to_numpy()
    rng = np.random.default_rng(0)
    cd34 = np.flatnonzero(labels == "CD34+")
    labels[cd34[4:]] = np.nan  # 4 labelled CD34+ cells remain: a rare class
    others = rng.permutation(np.flatnonzero(labels != "CD34+"))
    labels[others[:15]] = np.nan
    labels[others[15:20]] = ""
    adata.obs["bulk_labels"] = labels
    path = tmp_path_factory.mktemp("messy") / "pbmc68k_messy.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.mark.slow
def test_evaluate_annotation_cli_on_messy_file(messy_h5ad, tmp_path, mlflow_uri):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "annotation",
            "--h5ad",
            str(messy_h5ad),
            "--label-key",
            "bulk_labels",
            "--layer",
            "counts",
            "--baseline",
            "pca_lr",
            "--baseline",
            "all_genes_lr",
            "--baseline",
            "pca_knn",
            "--max-epochs",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"dropped {N_MISSING} cells with a missing label" in result.output
    assert "class 'CD34+': rare" in result.output

    table = pd.read_csv(out / "comparison.csv")
    assert list(table["kind"]) == ["baseline"] * 3 + ["control"] * 2
    assert set(table["method"]) == {
        "LR on PCA(50) of HVGs",
        "LR on all genes (CellTypist-style)",
        "kNN (k=15) on PCA(50)",
        "scfm random-init (tiny) + MLP",
        "scfm random-init (tiny) + LR",
    }
    classes = pd.read_csv(out / "classes.csv").set_index("class")
    assert classes.loc["CD34+", "status"] == "rare"
    scored = classes.index[classes["status"] == "ok"].tolist()
    assert "CD34+" not in scored and len(scored) == 9

    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    summary = json.loads((out / "split.json").read_text())
    assert summary["n_missing_labels"] == N_MISSING
    assert summary["n_cells_labelled"] == 700 - N_MISSING
    assert len(preds) == summary["split"]["n_test"]
    assert (preds["label"] != "").all()
    for row in table.itertuples():
        y, p = preds["label"], preds[row.method]
        assert row.accuracy == pytest.approx(accuracy_score(y, p))
        assert row.macro_f1 == pytest.approx(
            f1_score(y, p, labels=scored, average="macro", zero_division=0)
        )
        assert 0 <= row.macro_f1 <= 1 and 0 <= row.accuracy <= 1 and row.seconds > 0
    per_class = pd.read_csv(out / "per_class_f1.csv", index_col="method")
    assert per_class.loc["LR on PCA(50) of HVGs", "CD19+ B"] == pytest.approx(
        f1_score(preds["label"], preds["LR on PCA(50) of HVGs"], labels=["CD19+ B"], average=None)[
            0
        ]
    )
    md = (out / "comparison.md").read_text()
    assert "rare classes" in md and "CD34+" in md and f"missing label: {N_MISSING}" in md
    for png in ("comparison.png", "confusion.png", "per_class_f1.png"):
        assert (out / png).stat().st_size > 10_000

    runs = mlflow.search_runs(experiment_names=["evaluate"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["metrics.lr_on_pca_50_of_hvgs.macro_f1"] == pytest.approx(
        table.set_index("method").loc["LR on PCA(50) of HVGs", "macro_f1"]
    )
    assert run["tags.scfm.task"] == "annotation"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "evaluation")}
    assert "evaluation/comparison.csv" in artifacts and "evaluation/predictions.csv" in artifacts


def test_non_count_input_stops_with_the_validation_error(messy_h5ad, tmp_path):
    base = [
        "evaluate",
        "annotation",
        "--h5ad",
        str(messy_h5ad),
        "--label-key",
        "bulk_labels",
        "--out",
        str(tmp_path),
        "--no-mlflow",
    ]
    result = runner.invoke(app, base)  # X is log-normalized
    assert result.exit_code == 1
    assert "InputValidationError" in result.output and "looks log-normalized" in result.output
    result = runner.invoke(app, [*base, "--normalized-input"])
    assert result.exit_code == 1 and "--total-counts-key" in result.output
    result = runner.invoke(app, [*base, "--label-key", "cell_type"])
    assert result.exit_code == 1 and "obs columns are" in result.output


def test_normalized_input_fallback_reconstructs_counts(tmp_path):
    """pbmc68k_reduced has scaled X and log-normalized raw.X: the fallback recovers counts."""
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "annotation",
            "--h5ad",
            str(datasets.fetch("pbmc68k_reduced")),
            "--label-key",
            "bulk_labels",
            "--layer",
            "raw",
            "--normalized-input",
            "--total-counts-key",
            "n_counts",
            "--no-control",
            "--baseline",
            "pca_lr",
            "--no-mlflow",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["method"]) == ["LR on PCA(50) of HVGs"]
    # same cells, split and counts as the registered counts file: the same predictions
    ref = runner.invoke(
        app,
        [
            "evaluate",
            "annotation",
            "--h5ad",
            str(datasets.fetch("pbmc68k_counts")),
            "--label-key",
            "bulk_labels",
            "--no-control",
            "--baseline",
            "pca_lr",
            "--no-mlflow",
            "--out",
            str(tmp_path / "ref"),
        ],
    )
    assert ref.exit_code == 0, ref.output
    a = pd.read_csv(out / "predictions.csv")
    b = pd.read_csv(tmp_path / "ref" / "predictions.csv")
    pd.testing.assert_frame_equal(a, b)


def test_evaluate_cli_grouped_donor_holdout_and_several_train_values(tmp_path):
    """--split-key donor --test-groups 3 (seeded) and repeated --train-value, end to end."""
    adata = read_counts(datasets.fetch("pbmc68k_counts"))
    adata.obs["donor"] = [f"donor{i % 6}" for i in range(adata.n_obs)]
    path = tmp_path / "donors.h5ad"
    adata.write_h5ad(path)
    base = [
        "evaluate",
        "annotation",
        "--h5ad",
        str(path),
        "--label-key",
        "bulk_labels",
        "--split-key",
        "donor",
        "--no-control",
        "--baseline",
        "pca_knn",
        "--no-mlflow",
    ]
    result = runner.invoke(
        app, [*base, "--test-groups", "3", "--seed", "1", "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "g" / "split.json").read_text())
    assert summary["split"]["config"]["test_groups"] == 3
    assert "3 of 6 groups held out for test (seed 1)" in summary["split"]["description"]
    preds = pd.read_csv(tmp_path / "g" / "predictions.csv")
    donor = adata.obs["donor"]
    test_donors = set(donor.loc[preds["cell"].astype(str)])
    assert len(test_donors) == 3 and len(preds) == (donor.isin(test_donors)).sum()

    result = runner.invoke(
        app,
        [
            *base,
            "--train-value",
            "donor0",
            "--train-value",
            "donor1",
            "--test-value",
            "donor5",
            "--out",
            str(tmp_path / "v"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "v" / "split.json").read_text())
    assert summary["split"]["n_train"] == (donor.isin(["donor0", "donor1"])).sum()
    assert summary["split"]["n_test"] == (donor == "donor5").sum()

    result = runner.invoke(app, [*base, "--test-groups", "6", "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "between 1 and 5" in result.output
