"""Losing a worker node mid-run: the corpus build loses no cell, training resumes to the end.

A test hook pauses one piece of work (a corpus block read; a training step of the last rank)
and writes which node it is on; the test then removes that node (its raylet and every worker
process on it are killed) while the work is in flight.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import DirectorySource, H5ADSource
from scfm.data.io import read_counts
from scfm.storage import exists
from scfm.train.pretrain import run_pretraining
from tests.corpus.conftest import assert_same_corpus

from .conftest import ensure_workers, worker_nodes
from .helpers import (
    Background,
    GatedDirectorySource,
    read_reports,
    recording_train_loop,
    wait_for,
    wait_until,
)
from .test_object_store import pretrain_cfg

pytestmark = pytest.mark.slow


def _remove_node_of(cluster, node_id: str) -> None:
    (node,) = [n for n in worker_nodes(cluster) if n.node_id == node_id]
    cluster.remove_node(node, allow_graceful=False)


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
        _remove_node_of(ray_cluster, doomed)
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


def test_training_resumes_after_node_loss_to_the_same_final_step(
    ray_cluster, s3, tmp_path, mlflow_uri
):
    corpus = tmp_path / "corpus"
    build_corpus(
        BuildConfig(
            output=str(corpus),
            sources=[H5ADSource(paths=[str(datasets.fetch("kang2018"))], name="kang")],
            block_cells=1000,
            executor="local",
            mlflow=False,
            progress=False,
        )
    )
    log_dir = tmp_path / "reports"
    log_dir.mkdir()
    cfg = pretrain_cfg(str(corpus), s3.uri("ray-node-loss"), "run-loss", steps=6)
    loop = recording_train_loop(str(log_dir), pause_at_step=3)
    train = Background(lambda: run_pretraining(cfg, max_failures=1, train_loop=loop))
    try:
        paused = wait_for("paused-*", log_dir, train, timeout=300)  # the last rank sleeps at step 3
        doomed = paused.name.removeprefix("paused-")
        # Ray Train commits a reported checkpoint when its controller has seen every rank's
        # report (a snapshot file in the run directory); only then does losing a node keep it
        snapshot = s3.uri("ray-node-loss", "run-loss", "checkpoint_manager_snapshot.json")
        wait_until(lambda: exists(snapshot), timeout=120)
        _remove_node_of(ray_cluster, doomed)
        ensure_workers(ray_cluster)  # a replacement node, as an autoscaler would add
        result = train.outcome(timeout=400)
    finally:
        ensure_workers(ray_cluster)
    assert result.metrics["step"] == 6
    reports = read_reports(log_dir)
    before = [r for r in reports if not r["restored"]]
    after = [r for r in reports if r["restored"]]
    assert max(r["step"] for r in before) == 3 and doomed in {r["node"] for r in before}
    assert doomed not in {r["node"] for r in after}
    assert len({r["node"] for r in after}) == 2  # the restarted group spans 2 nodes again
    restored = mlflow.MlflowClient().get_metric_history(result.run_id, "restored_step")
    assert [m.value for m in restored] == [2.0]  # the step-2 checkpoint on s3://
    assert sorted({r["step"] for r in after}) == [2, 3, 4, 5, 6]
