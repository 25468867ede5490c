"""Losing a worker node mid-run: the corpus build loses no cell, training resumes to the end.

A test hook pauses one piece of work (a corpus block read; a training step of the last rank)
and writes which node it is on; the test then removes that node (its raylet and every worker
process on it are killed) while the work is in flight. The training drill is the package's
``drilled_run`` (conftest.py), which the object-store and team-MLflow tests inspect too.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import DirectorySource
from scfm.data.io import read_counts
from tests.corpus.conftest import assert_same_corpus

from .conftest import ensure_workers, remove_node_of
from .helpers import Background, GatedDirectorySource, wait_for

pytestmark = pytest.mark.slow


def test_corpus_build_loses_no_cell_when_a_node_dies(ray_cluster, tmp_path):
    kang = read_counts(datasets.fetch("kang2018"))
    root = tmp_path / "inputs"
    root.mkdir()
    kang[:600].write_h5ad(root / "a.h5ad")
    kang[600:1000].write_h5ad(root / "b.h5ad")
    gate = tmp_path / "gate"
    gate.mkdir()
    source = GatedDirectorySource(root=str(root), name="lab").gate(str(gate), "a.h5ad")

    def cfg(out: Path, src, executor: str) -> BuildConfig:
        return BuildConfig(
            output=f"file://{out}",  # a mount every node shares: local paths are refused
            sources=[src],
            qc=QCConfig(min_genes=50),
            block_cells=200,
            executor=executor,
            mlflow=False,
            progress=False,
        )

    build = Background(lambda: build_corpus(cfg(tmp_path / "corpus", source, "ray")))
    try:
        blocked = wait_for("blocked-*", gate, build)  # block 0 of a.h5ad sleeps on this node
        doomed = blocked.name.removeprefix("blocked-")
        remove_node_of(ray_cluster, doomed)
        (gate / "removed").write_text("")
        result = build.outcome(timeout=300)
    finally:
        ensure_workers(ray_cluster)
    assert result.exit_code == 0 and not result.manifest.quarantined
    assert doomed not in {r.node for r in result.unit_results}  # its block was re-run elsewhere
    assert len(result.unit_results) == 5
    fresh = DirectorySource(root=str(root), name="lab")
    build_corpus(cfg(tmp_path / "fresh", fresh, "local"))
    assert_same_corpus(str(tmp_path / "corpus"), str(tmp_path / "fresh"))


def test_training_resumes_after_node_loss_to_the_same_final_step(drilled_run):
    result, reports, doomed = drilled_run.result, drilled_run.reports, drilled_run.doomed
    assert result.metrics["step"] == 6
    before = [r for r in reports if not r["restored"]]
    after = [r for r in reports if r["restored"]]
    assert max(r["step"] for r in before) == 3 and doomed in {r["node"] for r in before}
    assert doomed not in {r["node"] for r in after}
    assert len({r["node"] for r in after}) == 2  # the restarted group spans 2 nodes again
    restored = mlflow.MlflowClient().get_metric_history(result.run_id, "restored_step")
    assert [m.value for m in restored] == [2.0]  # the step-2 checkpoint on s3://
    assert sorted({r["step"] for r in after}) == [2, 3, 4, 5, 6]
