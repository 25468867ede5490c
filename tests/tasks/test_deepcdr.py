"""The DeepCDR head: metrics against scipy, baselines, a short training run, save / load, and
``scfm evaluate deepcdr`` / ``scfm finetune deepcdr`` end to end (real Ray, real MLflow)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import typer
from scipy import stats
from typer.testing import CliRunner

from scfm.tasks.base import fit_head, load_head, save_head
from scfm.tasks.deepcdr import (
    DeepCDRData,
    DeepCDRHead,
    expression_features,
    predict_pairs,
    scfm_features,
)
from scfm.tasks.deepcdr_cli import evaluate_deepcdr_command, finetune_deepcdr_command
from scfm.tasks.drug_baselines import Additive, DrugMean, RidgeBaseline
from scfm.tasks.drug_data import (
    PairSplitConfig,
    load_drug_response,
    make_pair_split,
    normalize_name,
)
from scfm.tasks.regression import grouped_metrics, regression_metrics

runner = CliRunner()
SUBSET = ["--max-cell-lines", "30", "--max-drugs", "10", "--max-genes", "200"]


def cli_app() -> typer.Typer:
    """The two commands registered as the integrator will register them in scfm.tasks.cli."""
    app = typer.Typer()
    evaluate_app, finetune_app = typer.Typer(), typer.Typer()
    evaluate_app.command("deepcdr")(evaluate_deepcdr_command)
    finetune_app.command("deepcdr")(finetune_deepcdr_command)
    app.add_typer(evaluate_app, name="evaluate")
    app.add_typer(finetune_app, name="finetune")
    return app


@pytest.fixture(scope="module")
def subset():
    """120 GDSC2 cell lines × 30 drugs (seeded), a random-pair split and the expression module."""
    data = load_drug_response("GDSC2", max_cell_lines=120, max_drugs=30, seed=0)
    split = make_pair_split(data, PairSplitConfig("random", seed=0))
    return data, split, DeepCDRData.from_split(data, split, expression_features(data))


def test_metrics_match_scipy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    p = np.round(y + rng.normal(scale=0.7, size=300), 1)  # ties for Spearman
    drugs = rng.integers(0, 6, size=300)
    m = regression_metrics(y, p, drugs)
    assert m.pearson == pytest.approx(stats.pearsonr(y, p)[0], rel=1e-10)
    assert m.spearman == pytest.approx(stats.spearmanr(y, p)[0], rel=1e-10)
    assert m.rmse == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    per = grouped_metrics(y, p, drugs)
    for g, row in per.set_index("group").iterrows():
        sel = drugs == g
        assert row["pearson"] == pytest.approx(stats.pearsonr(y[sel], p[sel])[0], rel=1e-10)
        assert row["spearman"] == pytest.approx(stats.spearmanr(y[sel], p[sel])[0], rel=1e-10)
    assert m.within_drug_pearson == pytest.approx(per["pearson"].mean())
    assert np.isnan(regression_metrics(y, np.full(300, 2.0)).pearson)  # constant prediction
    small = grouped_metrics(y[:12], p[:12], drugs[:12])
    assert small["pearson"].isna().all()  # fewer than 10 pairs per drug: no correlation


def test_additive_recovers_additive_data_and_says_when_it_falls_back():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8), rng.normal(size=20)
    cell, drug = np.meshgrid(np.arange(20), np.arange(8), indexing="ij")
    cell, drug = cell.ravel(), drug.ravel()
    keep = rng.random(cell.size) < 0.7  # unbalanced design
    y = 2.0 + a[drug] + b[cell]
    model = Additive(21, 9).fit(cell[keep], drug[keep], y[keep])
    np.testing.assert_allclose(model.predict(cell, drug), y, atol=1e-6)
    unseen = model.predict(np.array([20, 3, 20]), np.array([2, 8, 8]))
    assert unseen[0] == pytest.approx(model.mu + model.a[2])  # new cell line: drug effect only
    assert unseen[1] == pytest.approx(model.mu + model.b[3])  # new drug: cell effect only
    assert unseen[2] == pytest.approx(model.mu)
    assert model.fallbacks(np.array([20, 3, 20, 0]), np.array([2, 8, 8, 0])) == {
        "unseen_cell_line": 1,
        "unseen_drug": 1,
        "unseen_both": 1,
    }
    dm = DrugMean(9).fit(cell[keep], drug[keep], y[keep])
    assert dm.predict(np.array([0]), np.array([8]))[0] == pytest.approx(y[keep].mean())


def test_ridge_uses_fingerprints_only_for_unseen_drugs(subset):
    data, split, _ = subset
    fp = np.random.default_rng(0).integers(0, 2, size=(len(data.drugs), 64)).astype(np.float32)
    tr, te = split.train, split.test
    r = RidgeBaseline(n_components=10).fit(
        data.cell[tr],
        data.drug[tr],
        data.y[tr],
        expression_features(data),
        fp,
        use_fingerprints=False,
    )
    pred = r.predict(data.cell[te], data.drug[te])
    assert r.drug_features == "onehot"
    assert regression_metrics(data.y[te], pred).pearson > 0.7


def test_short_training_lowers_val_loss_and_beats_the_mean(subset, tmp_path):
    data, split, module = subset
    assert module.size("train") + module.size("val") + module.size("test") == data.n_pairs
    head = DeepCDRHead()
    fit = fit_head(
        head, module, {"max_epochs": 5, "fusion": "mlp", "patience": 5, "seed": 0}, device="cpu"
    )
    val = [h["val_loss"] for h in fit.history]
    assert min(val[1:]) < val[0]
    pred, y = predict_pairs(fit.model, module, "test")
    mean_rmse = np.sqrt(np.mean((y - data.y[split.train_only].mean()) ** 2))
    m = regression_metrics(y, pred)
    assert m.rmse < 0.8 * mean_rmse and m.pearson > 0.5
    # save / load round trip gives the same predictions
    save_head(tmp_path / "head", fit.model, fit.config, fit.spec)
    loaded, payload = load_head(tmp_path / "head", head)
    assert payload["spec"]["extra"]["cell_input"] == "expression"
    np.testing.assert_allclose(predict_pairs(loaded, module, "test")[0], pred, rtol=1e-5)


def test_original_conv_fusion_and_scfm_embeddings(subset):
    from scfm.tasks.models import random_init

    data, split, _ = subset
    small = load_drug_response("GDSC2", max_cell_lines=8, max_drugs=4, max_genes=100, seed=0)
    emb, seconds = scfm_features(small, random_init("tiny", 0), device="cpu")
    assert emb.shape == (8, 32) and np.isfinite(emb).all() and seconds > 0
    module = DeepCDRData.from_split(
        small, make_pair_split(small, PairSplitConfig("random", 0.25, 0.25)), emb, "scfm"
    )
    model = DeepCDRHead().build(DeepCDRHead().default_config(), module.spec(), module)
    batch, y = next(module.batches("train", 16))
    out = model.train()(batch)
    assert out.shape == y.shape and torch.isfinite(out).all()
    assert model.fusion.__class__.__name__ == "ConvFusion"


@pytest.mark.slow
def test_evaluate_cli_end_to_end(tmp_path, mlflow_uri):
    out = tmp_path / "eval"
    result = runner.invoke(
        cli_app(),
        ["evaluate", "deepcdr", *SUBSET, "--max-epochs", "2", "--fusion", "mlp", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "184,159" not in result.output and "30 cell lines × 10 drugs" in result.output
    assert "additive baseline" in result.output
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 3 * 5 and set(table["split"]) == {"random", "cell", "drug"}
    assert (table.groupby("split")["kind"].apply(lambda k: (k == "control").sum()) == 1).all()
    preds = pd.read_csv(out / "predictions.csv")
    splits = json.loads((out / "splits.json").read_text())
    for row in table.itertuples():
        sub = preds[preds["split"] == row.split]
        assert len(sub) == row.n_test == splits[row.split]["n_test"]
        y, p = sub["ln_ic50"], sub[row.method]
        if np.ptp(p) > 0:
            assert row.pearson == pytest.approx(stats.pearsonr(y, p)[0], rel=1e-6)
            assert row.spearman == pytest.approx(stats.spearmanr(y, p)[0], rel=1e-6)
        assert row.rmse == pytest.approx(np.sqrt(np.mean((y - p) ** 2)), rel=1e-6)
    # leave-drugs-out: no held-out drug is predicted from its own training pairs
    held = set(splits["drug"]["held_out"])
    test_drugs = preds.loc[preds["split"] == "drug", "drug"]
    assert held and {normalize_name(d) for d in test_drugs} == held
    drug_row = table[(table["split"] == "drug") & (table["method"] == "drug mean")].iloc[0]
    assert np.isnan(drug_row["pearson"])  # unseen drugs → one global mean
    notes = (out / "comparison.md").read_text()
    assert "unseen drug" in notes and "morgan" in notes
    per_drug = pd.read_csv(out / "per_drug.csv")
    assert {"split", "method", "drug", "n", "pearson"} <= set(per_drug.columns)
    for png in ("comparison.png", "per_drug.png", "per_tissue.png"):
        assert (out / png).stat().st_size > 10_000
    runs = mlflow.search_runs(experiment_names=["evaluate"])
    assert len(runs) == 1 and runs.iloc[0]["tags.scfm.task"] == "deepcdr"
    key = "metrics.random.additive_drug_cell_line_effects.pearson"
    assert runs.iloc[0][key] == pytest.approx(
        table.set_index(["split", "method"]).loc[
            ("random", "additive (drug + cell-line effects)"), "pearson"
        ]
    )


def test_cli_bad_input_names_the_fix(tmp_path):
    bad = tmp_path / "resp.csv"
    pd.DataFrame({"cell": ["A"], "compound": ["B"], "ic50": [1.0]}).to_csv(bad, index=False)
    app = cli_app()
    result = runner.invoke(
        app, ["evaluate", "deepcdr", "--response", str(bad), "--cell-col", "cell", "--no-mlflow"]
    )
    assert result.exit_code == 1 and "no column 'drug'" in result.output
    assert "--drug-col" in result.output
    result = runner.invoke(
        app, ["evaluate", "deepcdr", *SUBSET, "--split", "tissue", "--no-mlflow"]
    )
    assert result.exit_code == 1 and "unknown split 'tissue'" in result.output
