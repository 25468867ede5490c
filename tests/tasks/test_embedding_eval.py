"""``scfm evaluate embedding`` end to end on real cells (300 Kang PBMCs, condition as the batch),
with a real sqlite MLflow store; the Python API on a backed file with subsampling and no batch
key; and the bad inputs that must stop with a message naming the fix."""

from __future__ import annotations

import dataclasses
import inspect
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scfm import datasets
from scfm.cli import app
from scfm.data.io import read_counts
from scfm.tasks.embedding_cli import evaluate_embedding_command
from scfm.tasks.embedding_eval import EmbeddingEvalConfig, evaluate_embedding
from scfm.tasks.labelled import LabelError
from scfm.tasks.scib import AGGREGATES, BATCH_METRICS, BIO_METRICS
from tests.conftest import tracking_store

runner = CliRunner()
N_CELLS = 300


@pytest.fixture(scope="module")
def kang300():
    """300 Kang cells (seeded), in memory, with condition (control / stimulated) as the batch."""
    adata = read_counts(datasets.fetch("kang2018"))
    keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, N_CELLS, replace=False))
    return adata[keep].copy()


@pytest.fixture(scope="module")
def kang300_h5ad(kang300, tmp_path_factory):
    path = tmp_path_factory.mktemp("kang300") / "kang300.h5ad"
    kang300.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained_checkpoint(kang300, tmp_path_factory):
    """A tiny model pretrained for 2 RDA steps on these cells, saved as a checkpoint folder."""
    from scfm.data.genes import GeneVocab
    from scfm.model.checkpoint import save_checkpoint
    from scfm.tasks.models import briefly_pretrain

    counts = kang300.X
    vocab_counts = GeneVocab.load().map(kang300.var_names).apply(counts)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    backbone = briefly_pretrain(vocab_counts, totals, steps=2, batch_size=4, seed=0, device="cpu")
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-2-steps"
    save_checkpoint(folder, backbone.model, metadata=backbone.metadata)
    return folder


@pytest.fixture(scope="module")
def cli_run(kang300_h5ad, trained_checkpoint, tmp_path_factory):
    """One CLI run with its own MLflow store (module scope: the scIB kernels compile once)."""
    root = tmp_path_factory.mktemp("cli")
    cmd = ["evaluate", "embedding"]
    with tracking_store(root) as uri:
        result = runner.invoke(
            app,
            [
                *cmd,
                "--h5ad", str(kang300_h5ad),
                "--label-key", "cell_type",
                "--batch-key", "condition",
                "--model", str(trained_checkpoint),
                "--out", str(root / "out"),
                "--device", "cpu",
            ],
        )  # fmt: skip
    return result, root / "out", uri, trained_checkpoint


def test_cli_scores_every_representation_on_the_same_cells(cli_run):
    result, out, _, _ = cli_run
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "embedding_metrics.csv")
    reps = dict(zip(table.representation, table.kind, strict=True))
    assert reps == {
        "PCA(50) of HVGs": "baseline",
        "PCA(50) of all genes": "baseline",
        "scfm-tiny (2 steps)": "scfm",
        "scfm random-init (tiny)": "control",  # always added
    }
    assert (table.n_cells == N_CELLS).all() and not table.subsampled.any()
    cols = [*BIO_METRICS, *BATCH_METRICS, *AGGREGATES]
    values = table[cols].to_numpy(dtype=float)
    assert np.isfinite(values).all() and (values >= -0.05).all() and (values <= 1.0 + 1e-6).all()
    np.testing.assert_allclose(
        table.total, 0.6 * table.bio_conservation + 0.4 * table.batch_correction
    )
    assert list(table.total) == sorted(table.total, reverse=True)
    assert (table[table.kind == "baseline"].dims == 50).all()
    assert (table[table.kind != "baseline"].dims > 50).all()  # concat[S, T, max, mean]
    # the all-genes PCA separates cell types far better than a random-init encoder
    by = table.set_index("representation")
    assert (
        by.loc["PCA(50) of all genes", "leiden_nmi"]
        > by.loc["scfm random-init (tiny)", "leiden_nmi"]
    )

    md = (out / "embedding_metrics.md").read_text()
    assert "total = 0.6 · bio conservation + 0.4 · batch correction" in md
    assert "skipped scvi: scvi-tools is not installed" in md
    assert f"best total: **{table.representation[0]}**" in md
    assert "best total:" in result.output and "scvi-tools is not installed" in result.output
    for name in ("scib_results.png", "umap.png"):
        assert (out / name).stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"]["n_cells_scored"] == N_CELLS
    assert summary["cells"]["per_batch"] == {
        "control": {"cells": 147, "scored": 147},
        "stimulated": {"cells": 153, "scored": 153},
    }


def test_cli_run_is_in_mlflow_and_links_the_models(cli_run):
    result, _, uri, checkpoint = cli_run
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("evaluate")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id in result.output
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["scfm.task"] == "embedding" and tags["scfm.dataset"] == "kang300"
    assert tags["scfm.model.0"] == str(checkpoint)
    assert tags["scfm.model.1"] == "random:tiny"
    assert params["model.0.label"] == "scfm-tiny (2 steps)"
    assert params["model.1.source"] == "random:tiny"
    assert params["embedding.batch_key"] == "condition"
    assert 0 <= metrics["pca_50_of_all_genes.total"] <= 1
    assert "scfm_random_init_tiny.kbet" in metrics
    assert metrics["n_cells_scored"] == N_CELLS
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {
        "evaluation/embedding_metrics.csv",
        "evaluation/embedding_metrics.md",
        "evaluation/scib_results.png",
        "evaluation/umap.png",
        "evaluation/summary.json",
    } <= artifacts


def test_api_on_a_backed_file_subsamples_and_scores_bio_only(kang300_h5ad, caplog):
    import scfm.tasks

    assert scfm.tasks.evaluate_embedding is evaluate_embedding
    backed = read_counts(kang300_h5ad, backed=True)
    with caplog.at_level("WARNING", logger="scfm.tasks.embedding_eval"):
        table = evaluate_embedding(
            backed, label_key="cell_type", cells_per_batch=120, baselines=["hvg_pca"],
            device="cpu", seed=3,
        )  # fmt: skip
    assert "scoring 120 of 300 labelled cells: at most 120 in all" in caplog.text
    assert set(table.representation) == {"PCA(50) of HVGs", "scfm random-init (tiny)"}
    assert list(table.total) == sorted(table.total, reverse=True)
    assert (table.n_cells == 120).all() and table.subsampled.all()
    assert (table.cells_per_batch == 120).all() and (table.n_cells_input == N_CELLS).all()
    assert table[list(BATCH_METRICS) + ["batch_correction"]].isna().all().all()
    np.testing.assert_allclose(table.total, table.bio_conservation)
    assert table.attrs["subsampling"]["subsample_scope"] == "in all"


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (None, {"label_key": "celltype"}, r"label column 'celltype' is not in obs.*--label-key"),
        (None, {"batch_key": "donor"}, r"batch column 'donor' is not in obs.*leave it out"),
        ("one_batch", {}, r"single value \('control'\).*Leave out --batch-key"),
        ("one_class", {}, r"single class \('B'\).*at least two"),
        (None, {"cells_per_batch": 40}, r"only 80 cells are left.*90 nearest.*--cells-per-batch"),
    ],
)
def test_bad_inputs_stop_with_the_fix(kang300, change, kwargs, message):
    adata = kang300.copy()
    if change == "one_batch":
        adata.obs["condition"] = "control"
    elif change == "one_class":
        adata.obs["cell_type"] = "B"
    options = {"label_key": "cell_type", "batch_key": "condition", "umap": False} | kwargs
    with pytest.raises(LabelError, match=message):
        evaluate_embedding(adata, **options)


def test_cli_bad_input_exits_1_with_the_message(kang300_h5ad, tmp_path):
    cmd = ["evaluate", "embedding"]
    result = runner.invoke(
        app,
        [*cmd, "--h5ad", str(kang300_h5ad), "--label-key", "cell_type", "--batch-key", "donor",
         "--out", str(tmp_path), "--no-mlflow"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "LabelError: batch column 'donor' is not in obs" in result.output
    assert "condition" in result.output  # the columns there are, to choose from


def test_non_count_input_is_refused(kang300):
    adata = kang300.copy()
    adata.X = adata.X.astype(np.float32) / 3.0
    with pytest.raises(ValueError, match="raw count"):
        evaluate_embedding(adata, label_key="cell_type", batch_key="condition")


def test_cli_defaults_are_the_config_defaults():
    params = inspect.signature(evaluate_embedding_command).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(EmbeddingEvalConfig)}
    for name in ("batch_key", "cells_per_batch", "layer", "scvi_epochs", "umap", "device", "seed"):
        assert params[name].default == defaults[name], name
    assert params["dataset"].default is None and params["baseline"].default is None
