"""`scfm demo` (the quick start's main job) end to end: report, corpus, pretraining, MLflow."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from scfm.cli import app
from scfm.corpus.loader import open_corpus
from scfm.demo import DEMO_INPUTS

pytestmark = pytest.mark.slow


def test_demo_runs_the_pipeline_and_says_where_results_are(ray_local, mlflow_uri, tmp_path):
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path), "--steps", "4", "--no-progress"]
    )
    assert result.exit_code == 0, result.output

    # 1. inputs: validation and mapping report
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report] == [name for name, _ in DEMO_INPUTS]
    status = {r["name"]: r["ok"] for r in report}
    assert status.pop("pbmc68k-scaled") is False
    assert all(status.values())
    kang = next(r for r in report if r["name"] == "kang2018")
    assert kang["validation"]["n_cells"] == 1975 and kang["mapping"]["n_direct"] == 5805
    assert (tmp_path / "gene_mapping.png").stat().st_size > 5000
    assert "| kang2018 | 1,975 | 6,998 | 5,805 |" in (tmp_path / "report.md").read_text()

    # 2. corpus: the scaled file is quarantined, every other cell kept or counted as dropped
    corpus = open_corpus(str(tmp_path / "corpus"))
    man = corpus.manifest
    assert [q.dataset_id for q in man.quarantined] == ["pbmc68k_reduced.h5ad"]
    assert man.quarantined[0].stage == "validate"
    assert len(man.datasets) == 4
    t = man.totals
    assert t["n_cells_in"] == 1975 + 700 + 20729 + 1107
    assert t["n_cells_kept"] + sum(t["dropped"].values()) == t["n_cells_in"]
    assert corpus.n_cells == t["n_cells_kept"] > 2_000
    # the CRISPR screen measures a 299-gene panel: its cells fail the > 200 expressed genes QC
    assert t["dropped"]["min_genes"] > 20_000

    # 3. pretraining: a finished, registered MLflow run that points at the corpus
    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions("name='scfm-demo'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["scfm.corpus_version"] == str(corpus.version)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][-1] == 4

    # 4. evaluation: the demo model, its random-init control and the baselines on one split
    table = pd.read_csv(tmp_path / "annotation" / "comparison.csv")
    assert {"scfm", "control", "baseline"} <= set(table["kind"])
    assert len(table[table["kind"] == "baseline"]) == 3
    assert table["macro_f1"].between(0, 1).all() and table["accuracy"].between(0, 1).all()
    assert (tmp_path / "annotation" / "comparison.md").is_file()

    out = result.output.replace("\n", "")
    assert str(tmp_path) in out and "models:/scfm-demo/1" in out and "mlflow ui" in out
