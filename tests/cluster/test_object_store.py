"""Corpus, checkpoints and embeddings on ``s3://`` (a local moto server), over 3 Ray nodes.

Every stage runs on the multi-node cluster of this package (head + 2 worker nodes as separate
processes): the corpus build spreads its units over both workers, pretraining puts one of its
2 DDP workers on each node, batch embedding runs its actors there. Nothing in the configuration
names credentials or the endpoint: they come from the environment (see conftest.py).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from scfm.corpus.build import build_corpus
from scfm.corpus.build_report import build_and_log
from scfm.corpus.loader import open_corpus
from scfm.storage import list_files, redact_uri
from scfm.train.pretrain import latest_checkpoint, run_pretraining
from tests.corpus.conftest import assert_same_corpus

from .conftest import corpus_cfg, pretrain_cfg

pytestmark = pytest.mark.slow


def test_corpus_build_spreads_over_nodes_and_refreshes_on_s3(
    s3_corpus, s3, inputs, tmp_path, ray_cluster
):
    uri, result = s3_corpus
    nodes = {r.node for r in result.unit_results}
    assert len(result.unit_results) == 6 and len(nodes) >= 2, nodes  # ran on both workers
    assert "" not in nodes and ray_cluster.head_node.node_id not in nodes  # head has no CPUs
    files = list_files(uri)
    assert any(f.endswith(".parquet") for f in files) and all(f.startswith("s3://") for f in files)

    # refresh: a new input → only its blocks run; the result equals a fresh build
    root, spare = inputs
    (root / "c.h5ad").write_bytes(spare.read_bytes())
    try:
        # the URI carries credentials here on purpose: MLflow must only ever see them redacted
        key, secret = s3.env["AWS_ACCESS_KEY_ID"], s3.env["AWS_SECRET_ACCESS_KEY"]
        secret_uri = uri.replace("s3://", f"s3://{key}:{secret}@")
        refreshed = build_and_log(corpus_cfg(secret_uri, root, executor="ray", refresh=True))
        assert refreshed.units_processed == 2  # c.h5ad: 300 cells in blocks of 200
        assert refreshed.manifest.corpus_version == 2
        fresh = tmp_path / "fresh"
        build_corpus(corpus_cfg(str(fresh), root, executor="local", mlflow=False))
        assert_same_corpus(uri, str(fresh))
    finally:
        (root / "c.h5ad").unlink()
    run = mlflow.get_run(refreshed.mlflow_run_id)
    assert run.data.tags["scfm.corpus_uri"] == uri == redact_uri(secret_uri)
    logged = str(run.data.params) + str(run.data.tags)
    assert secret not in logged and key not in logged


def test_pretraining_on_two_nodes_resumes_from_s3_checkpoint(drilled_run, s3_corpus, s3):
    result, reports = drilled_run.result, drilled_run.reports
    assert result.metrics["step"] == 6
    assert len({r["node"] for r in reports if r["restored"]}) == 2  # one DDP worker per node
    assert result.run_dir == s3.uri("ray", "run-a")
    assert result.checkpoint_dir.startswith(s3.uri("ray", "run-a"))
    assert latest_checkpoint(result.run_dir) == result.checkpoint_dir

    more = pretrain_cfg(s3_corpus[0], s3.uri("ray"), "run-b", steps=8)
    resumed = run_pretraining(more, resume=result.run_dir)
    assert resumed.metrics["step"] == 8
    run = mlflow.get_run(resumed.run_id)
    assert run.data.tags["scfm.resumed_from"] == result.checkpoint_dir
    restored = mlflow.MlflowClient().get_metric_history(resumed.run_id, "restored_step")
    assert [(m.step, m.value) for m in restored] == [(6, 6.0)]


def test_batch_embedding_from_s3_checkpoint_to_s3(drilled_run, s3_corpus, s3):
    from scfm.inference.ray_batch import EmbedJobConfig, embed_dataset, read_embeddings

    result = drilled_run.result
    out = s3.uri("embeddings", "kang")
    job = embed_dataset(
        EmbedJobConfig(
            source=s3_corpus[0],
            model=result.checkpoint_dir,  # an s3:// checkpoint folder
            output=out,
            concurrency=1,  # the actor takes one node's CPU, reads run on the other
            block_cells=256,
            mlflow=False,
            progress=False,
        )
    )
    corpus = open_corpus(s3_corpus[0])
    assert job.n_cells == corpus.n_cells and job.output == out
    assert not [f for f in list_files(s3.uri("embeddings")) if ".tmp-" in f]
    table, emb = read_embeddings(out)
    assert emb.shape == (corpus.n_cells, job.embedding_dim) and np.isfinite(emb).all()
    assert sorted(table.column("cell_id").to_pylist()) == sorted(
        corpus.read_table(columns=["cell_id"]).column("cell_id").to_pylist()
    )
