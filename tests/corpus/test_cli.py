from __future__ import annotations

import json

from typer.testing import CliRunner

from scfm import datasets
from scfm.corpus.cli import corpus_app
from scfm.corpus.manifest import Manifest


def test_corpus_build_and_refresh_commands(tmp_path):
    out = tmp_path / "corpus"
    runner = CliRunner()
    args = [
        "-o",
        str(out),
        "--h5ad",
        str(datasets.fetch("pbmc68k_counts")),
        "--h5ad",
        str(datasets.fetch("pbmc68k_reduced")),
        "--executor",
        "local",
        "--no-mlflow",
        "--min-genes",
        "100",
    ]
    res = runner.invoke(corpus_app, ["build", *args])
    assert res.exit_code == 0, res.output
    assert "corpus v1 (build)" in res.output and "quarantined" in res.output
    res = runner.invoke(corpus_app, ["build", *args, "--strict"])
    assert res.exit_code == 1
    # refresh without source options reuses the manifest's sources: nothing changed, so it
    # commits no new version
    refresh = ["refresh", "-o", str(out), "--executor", "local", "--no-mlflow"]
    res = runner.invoke(corpus_app, [*refresh, "--min-genes", "100"])
    assert res.exit_code == 0, res.output
    assert "corpus v2 is up to date" in res.output
    assert sorted(p.name for p in (out / "manifests").glob("*.json")) == [
        "manifest-000001.json",
        "manifest-000002.json",
    ]
    # another QC threshold changes every data set's fingerprint: both are processed again
    res = runner.invoke(corpus_app, [*refresh, "--min-genes", "50"])
    assert res.exit_code == 0, res.output
    man = Manifest.from_dict(json.loads((out / "manifests" / "manifest-000003.json").read_text()))
    assert man.kind == "refresh" and man.parent_version == 2
    assert man.changes["changed"] == [
        "h5ad:pbmc68k_reduced.h5ad",  # the same bad file, read again: the same verdict
        "h5ad:pbmc68k_reduced_counts.h5ad",
    ]
    assert [q.dataset_id for q in man.quarantined] == ["pbmc68k_reduced.h5ad"]
    assert man.totals["n_cells_in"] == 700
