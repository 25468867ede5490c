"""`scfm demo` (the quick start's main job) end to end: report, corpus, pretraining, embeddings,
the annotation sweep, the drug / perturbation heads, the summary, and the MLflow lineage and links
between every stage. One ``scfm demo --small`` run (``demo_run``) is shared by these tests, the
notebooks' and the browser test."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import mlflow
import pandas as pd
import pytest
from rich.console import Console

from scfm.corpus.loader import open_corpus
from scfm.corpus.manifest import list_versions
from scfm.corpus.shards import resolve
from scfm.demo import DEMO_INPUTS, DemoConfig, build_demo_corpus
from scfm.tracking import EXPERIMENT_DESCRIPTIONS

pytestmark = pytest.mark.slow


def test_demo_runs_the_pipeline_and_says_where_results_are(demo_run):
    out, tmp_path = demo_run.output, demo_run.out

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

    # 3. pretraining: 2 Ray Train workers, 4 steps (--small)
    client = mlflow.MlflowClient(tracking_uri=demo_run.uri)
    (version,) = client.search_model_versions("name='scfm-demo'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["cfg.scale.num_workers"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][-1] == 4

    # 4. embeddings and their UMAP
    emb = tmp_path / "embeddings"
    assert (emb / "kang2018_scfm.npy").is_file()
    assert (emb / "kang2018_umap.png").stat().st_size > 10_000

    # 5. annotation: the swept scfm head, its random-init control and the baselines, one split
    table = pd.read_csv(tmp_path / "annotation" / "comparison.csv")
    assert {"scfm", "control", "baseline"} <= set(table["kind"])
    assert len(table[table["kind"] == "baseline"]) == 3
    assert table["macro_f1"].between(0, 1).all() and table["accuracy"].between(0, 1).all()

    # 6. heads: each against its baselines
    for head, family in (("deepcdr", "baseline"), ("scad", "expression"), ("gears", "baseline")):
        head_table = pd.read_csv(tmp_path / head / "comparison.csv")
        kinds = head_table["kind"].astype(str).str.split(",").str[0]
        assert {"scfm", "control", family} <= set(kinds), (head, set(kinds))

    # 7. summary: one row per task, the numbers of the tables above
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("task")
    assert list(summary.index) == ["annotation", "deepcdr", "scad", "gears"]
    scfm_rows = table[table["kind"] == "scfm"]
    assert summary.loc["annotation", "scfm"] == pytest.approx(scfm_rows["macro_f1"].max())
    assert summary.loc["annotation", "best baseline"] == pytest.approx(
        table[table["kind"] == "baseline"]["macro_f1"].max()
    )
    assert (tmp_path / "summary.md").read_text().startswith("| task | metric |")

    assert str(tmp_path) in out and "models:/scfm-demo/1" in out
    assert f"mlflow ui --backend-store-uri {demo_run.uri} --port 5000" in out
    assert re.search(r"wall time\s+\d+ s", out)

    # the README's sample of this output: the same stages, the same result labels
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sample = readme.split("and ends by printing where everything is:", 1)[1].split("```")[1]
    stages = re.findall(r"─ (\d/7 [a-z]+)", sample)
    assert len(stages) == 7 and all(s in out for s in stages), stages
    labels = re.findall(r"^  ([A-Za-z][A-Za-z ()]+?)\s+(?:…|http|mlflow|models)", sample, re.M)
    assert len(labels) >= 9 and all(label in out for label in labels), labels


def _tags(run, prefix="scfm."):
    return {k: v for k, v in run.data.tags.items() if k.startswith(prefix)}


def test_demo_stages_are_linked_in_mlflow(demo_run):
    """corpus build run → pretraining run → registered version → evaluation / sweep runs."""
    client = mlflow.MlflowClient(tracking_uri=demo_run.uri)
    corpus = open_corpus(str(demo_run.out / "corpus"))
    sha = corpus.manifest.checksum
    exps = {e.name: e for e in client.search_experiments()}
    assert {"corpus", "pretrain", "finetune", "evaluate"} <= set(exps)
    for name in ("corpus", "pretrain", "finetune", "evaluate"):
        assert exps[name].tags["mlflow.note.content"] == EXPERIMENT_DESCRIPTIONS[name]

    # corpus build run: the manifest records it; the corpus version is its output dataset
    build = client.get_run(corpus.manifest.mlflow_run_id)
    assert build.data.tags["scfm.corpus_version"] == str(corpus.version)
    assert build.data.tags["scfm.manifest_sha256"] == sha

    def corpus_inputs(run):
        return [
            (d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags})
            for d in run.inputs.dataset_inputs
        ]

    name = f"corpus v{corpus.version}"
    assert corpus_inputs(build) == [(name, sha[:36], {"mlflow.data.context": "build"})]

    # pretraining run: tagged with the corpus version and build run; the same dataset as input
    (version,) = client.search_model_versions("name='scfm-demo'")
    pre = client.get_run(version.run_id)
    assert _tags(pre) | {
        "scfm.corpus_version": str(corpus.version),
        "scfm.corpus_run_id": build.info.run_id,
        "scfm.model_uri": "models:/scfm-demo/1",
    } == _tags(pre)
    assert corpus_inputs(pre) == [(name, sha[:36], {"mlflow.data.context": "training"})]
    # the checkpoint as a logged model (the runs table's Models column), registered as version 1
    (logged,) = client.search_logged_models([pre.info.experiment_id])
    assert logged.source_run_id == pre.info.run_id and logged.name == "scfm-tiny"
    assert [o.model_id for o in pre.outputs.model_outputs] == [logged.model_id]
    # (the sqlite registry keeps no model id on a version: the link is the run)
    assert version.run_id == pre.info.run_id and version.source.endswith("/artifacts/model")

    # every downstream run (annotation, DeepCDR, SCAD, GEARS; the sweep parent) links back
    lineage = {
        "scfm.model_uri": "models:/scfm-demo/1",
        "scfm.pretrain_run_id": pre.info.run_id,
        "scfm.corpus_version": str(corpus.version),
        "scfm.corpus_run_id": build.info.run_id,
    }
    evaluations = client.search_runs([exps["evaluate"].experiment_id])
    assert sorted(r.data.tags["scfm.task"] for r in evaluations) == [
        "annotation",
        "deepcdr",
        "gears",
        "scad",
    ]
    sweeps = client.search_runs(
        [exps["finetune"].experiment_id], filter_string="tags.`scfm.sweep` = 'parent'"
    )
    scfm_sweep = [r for r in sweeps if r.data.tags.get("scfm.model_uri")]
    assert len(scfm_sweep) == 1 and len(sweeps) == 2  # the demo model's and the control's
    for r in [*evaluations, *scfm_sweep]:
        assert _tags(r) | lineage == _tags(r), r.info.run_name
        assert corpus_inputs(r) == [(name, sha[:36], {"mlflow.data.context": "pretraining"})]
    trials = client.search_runs(
        [exps["finetune"].experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{scfm_sweep[0].info.run_id}'",
    )
    assert len(trials) == 2  # --small: 2 trials

    # the printed links: each stage's runs table, run pages, the sweep's trials compared
    out = demo_run.output
    base = "http://127.0.0.1:5000/#/experiments"
    for exp, run_id in (
        ("corpus", build.info.run_id),
        ("pretrain", pre.info.run_id),
        ("finetune", scfm_sweep[0].info.run_id),
    ):
        exp_id = exps[exp].experiment_id
        assert f"{base}/{exp_id}/runs " in out + " " or f"{base}/{exp_id}/runs" in out
        assert f"{base}/{exp_id}/runs/{run_id}" in out
    for r in evaluations:
        assert f"{base}/{exps['evaluate'].experiment_id}/runs/{r.info.run_id}" in out
    compare = re.search(r"http://127\.0\.0\.1:5000/#/compare-runs\?runs=\S+", out)
    assert compare, out
    runs_part, _, exps_part = unquote(compare.group(0)).partition("&experiments=")
    assert sorted(json.loads(runs_part.split("runs=", 1)[1])) == sorted(
        r.info.run_id for r in trials
    )
    assert json.loads(exps_part) == [exps["finetune"].experiment_id]


def test_second_run_reuses_the_corpus(demo_run, tmp_path, mlflow_uri):
    """A second demo run refreshes the corpus, finds nothing to do, and says so (on a copy of
    the demo's corpus, so the shared run stays as it was)."""
    shutil.copytree(demo_run.out / "corpus", tmp_path / "corpus")
    first = open_corpus(str(tmp_path / "corpus")).manifest
    console = Console(record=True, width=200)
    result = build_demo_corpus(DemoConfig(out=tmp_path, progress=False), console)
    text = console.export_text()
    assert result.units_processed == 0 and not result.committed
    assert result.manifest == first  # the newest version, up to date: no new one committed
    assert list_versions(*resolve(str(tmp_path / "corpus"))) == [first.corpus_version]
    assert "corpus reused: refresh found nothing to do" in text
    assert f"v{first.corpus_version} is up to date, no new version committed" in text
