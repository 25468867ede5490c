"""End-to-end builds on real local Ray: Census fixture, h5ad and 10x files, bad inputs, MLflow."""

from __future__ import annotations

import dataclasses
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.build_report import build_and_log
from scfm.corpus.manifest import list_versions
from scfm.corpus.qc import QCConfig
from scfm.corpus.shards import ShardCheckError, resolve
from scfm.corpus.sources import CensusSource, H5ADSource, TenXSource
from scfm.data.io import read_counts

from .conftest import assert_arithmetic, corpus_frame, rows_to_csr

MIN_GENES = 50  # the 10x chr21 example has ~21 genes per cell: some cells pass, most do not


@pytest.fixture(scope="module")
def census_build(census_store, ray_local, tmp_path_factory, mlflow_uri_module):
    out = tmp_path_factory.mktemp("corpus") / "census_corpus"
    cfg = BuildConfig(
        output=str(out),
        sources=[CensusSource(uri=census_store.uri)],
        qc=QCConfig(min_genes=MIN_GENES),
        block_cells=700,
        max_cells_per_shard=400,
        val_fraction=0.1,
        progress=False,
    )
    return cfg, build_and_log(cfg)


@pytest.fixture(scope="module")
def mlflow_uri_module(tmp_path_factory):
    import os

    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    mlflow.set_tracking_uri(None)


def _census_expected(uri: str, vocab):
    import cellxgene_census

    with cellxgene_census.open_soma(uri=uri) as census:
        adata = cellxgene_census.get_anndata(
            census, organism="Homo sapiens", obs_value_filter="is_primary_data == True"
        )
    mapping = vocab.map(adata.var["feature_id"].astype(str).tolist())
    X = sp.csr_matrix(adata.X)
    ids = (
        "census:"
        + adata.obs["dataset_id"].astype(str)
        + ":"
        + adata.obs["observation_joinid"].astype(str)
    ).to_numpy()
    return adata, X, mapping.apply(X), ids


def test_census_build_keeps_or_counts_every_primary_cell(census_build, census_store, vocab):
    cfg, result = census_build
    man = result.manifest
    assert result.exit_code == 0
    assert man.quarantined == []
    assert_arithmetic(man)
    # non-primary cells are filtered at the source and never counted as input
    assert man.totals["n_cells_in"] == census_store.n_primary_cells == 5782
    adata, X, mapped, ids = _census_expected(census_store.uri, vocab)
    nnz = np.diff(X.indptr)
    by_ds = adata.obs.assign(nnz=nnz).groupby("dataset_id", observed=True)["nnz"]
    for d in man.datasets:
        n_genes = by_ds.get_group(d.dataset_id).to_numpy()
        assert d.n_cells_in == len(n_genes)
        assert d.dropped["min_genes"] == int((n_genes <= MIN_GENES).sum())
        assert d.n_blocks == -(-len(n_genes) // 700)
        assert d.version == next(
            s.dataset_version_id for s in census_store.datasets if s.dataset_id == d.dataset_id
        )
    assert man.sources[0].release["census_build_date"] == census_store.build_date


def test_census_counts_round_trip_exactly(census_build, census_store, vocab):
    cfg, result = census_build
    df = corpus_frame(cfg.output)
    assert df["cell_id"].is_unique
    assert len(df) == result.manifest.totals["n_cells_kept"]
    adata, X, mapped, ids = _census_expected(census_store.uri, vocab)
    pos = pd.Series(np.arange(len(ids)), index=ids)
    rows = pos[df["cell_id"]].to_numpy()
    expected = mapped[rows]
    got = rows_to_csr(df)
    assert np.array_equal(got.indptr, expected.indptr)
    assert np.array_equal(got.indices, expected.indices)
    assert np.array_equal(got.data, expected.data)
    assert np.array_equal(df["total_counts"].to_numpy(), adata.obs["raw_sum"].to_numpy()[rows])
    assert (df["cell_type"].to_numpy() == adata.obs["cell_type"].astype(str).to_numpy()[rows]).all()
    # shards are bounded: no file holds more than max_cells_per_shard rows
    assert max(s.n_cells for d in result.manifest.datasets for s in d.shards) <= 400
    val = (df["split"] == "val").mean()
    assert 0.05 < val < 0.15


def test_census_build_is_an_mlflow_run_with_metrics(census_build, census_store, mlflow_uri_module):
    import mlflow

    cfg, result = census_build
    runs = mlflow.search_runs(experiment_names=["corpus"], output_format="list")
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]
    run = runs[0]
    t = result.manifest.totals
    assert run.data.metrics["cells_in"] == t["n_cells_in"] == 5782
    assert run.data.metrics["cells_kept"] == t["n_cells_kept"]
    assert run.data.metrics["dropped_min_genes"] == t["dropped"]["min_genes"] > 0
    assert 0.9 < run.data.metrics["genes_mapped_fraction"] <= 1.0
    assert run.data.params["qc.min_genes"] == str(MIN_GENES)
    assert run.data.params["source.census.release.census_build_date"] == census_store.build_date
    assert run.data.params["source.census.spec.primary_only"] == "true"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"manifest.json", "qc_histograms.png", "dataset_versions.json"} <= arts


def test_refresh_with_nothing_to_do_commits_nothing_and_says_so_in_mlflow(
    census_build, tmp_path, mlflow_uri
):
    """A weekly refresh of an unchanged source adds no version (so none is retired by garbage
    collection, and runs pinned to the newest keep resuming); its MLflow run records the check."""
    import mlflow

    cfg, result = census_build
    copy = tmp_path / "corpus"
    shutil.copytree(cfg.output, copy)
    again = build_and_log(dataclasses.replace(cfg, output=str(copy), refresh=True))
    assert not again.committed and again.units_processed == 0 and again.exit_code == 0
    assert again.manifest == result.manifest
    assert list_versions(*resolve(str(copy))) == [1]
    assert again.histograms == result.histograms  # the QC plot of the version that is current
    (run,) = mlflow.search_runs(experiment_names=["corpus"], output_format="list")
    assert run.info.run_name == "refresh (up to date) v1"
    assert run.data.tags["scfm.committed"] == "false"
    assert run.data.tags["scfm.corpus_version"] == "1"
    assert run.data.params["kind"] == "refresh (up to date)"
    assert run.data.metrics["cells_kept"] == result.manifest.totals["n_cells_kept"]
    n = len(result.manifest.datasets)
    assert run.data.metrics["datasets_unchanged"] == n and run.data.metrics["datasets_added"] == 0
    assert "cells_per_s" not in run.data.metrics  # no cell was processed


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    kang = datasets.fetch("kang2018")
    corrupt = d / "corrupt.h5ad"
    corrupt.write_bytes(kang.read_bytes()[:50_000])  # truncated: HDF5 cannot open it
    empty = d / "empty.h5ad"
    k = read_counts(kang)
    ad.AnnData(X=sp.csr_matrix((0, 50), dtype=np.int32), var=k.var.iloc[:50]).write_h5ad(empty)
    mouse = d / "mouse_like.h5ad"
    sub = k[:100].copy()
    sub.var_names = [g.capitalize() for g in sub.var_names]  # Cd3e, Ms4a1, …: mouse style
    sub.write_h5ad(mouse)
    return {"corrupt": corrupt, "empty": empty, "mouse": mouse}


def test_files_build_with_bad_inputs_quarantined(ray_local, tmp_path, bad_inputs):
    kang = datasets.fetch("kang2018")
    sources = [
        H5ADSource(
            paths=[
                str(kang),
                str(datasets.fetch("pbmc68k_reduced")),
                *map(str, bad_inputs.values()),
            ]
        ),
        TenXSource(
            paths=[
                str(datasets.fetch_dir("tenx_v3_mex")),
                str(datasets.fetch("tenx_v3_h5")),
                str(datasets.fetch("tenx_v1_h5")),
            ]
        ),
    ]
    cfg = BuildConfig(
        output=str(tmp_path / "files"),
        sources=sources,
        qc=QCConfig(min_genes=MIN_GENES),
        block_cells=500,
        strict=True,
        mlflow=False,
        progress=False,
    )
    result = build_corpus(cfg)
    man = result.manifest
    assert result.exit_code == 1  # --strict and quarantined inputs
    q = {x.dataset_id: x for x in man.quarantined}
    assert set(q) == {"pbmc68k_reduced.h5ad", "corrupt.h5ad", "empty.h5ad", "mouse_like.h5ad"}
    assert q["corrupt.h5ad"].stage == "open" and "CorruptInputError" in q["corrupt.h5ad"].error
    assert q["empty.h5ad"].error == "empty data set: 0 cells"
    assert q["pbmc68k_reduced.h5ad"].stage == "validate"
    assert "negative values" in q["pbmc68k_reduced.h5ad"].error
    assert "mouse symbols" in q["mouse_like.h5ad"].error
    assert_arithmetic(man)
    ok = {d.dataset_id: d for d in man.datasets}
    assert set(ok) == {
        "kang2018_pbmc_ifnb.h5ad",
        "filtered_feature_bc_matrix",
        "filtered_feature_bc_matrix.h5",
        "filtered_gene_bc_matrices_h5.h5",
    }
    assert ok["kang2018_pbmc_ifnb.h5ad"].n_blocks == 4  # 1,975 cells, backed, 500 per block
    df = corpus_frame(cfg.output)
    from scfm.data.genes import GeneVocab

    vocab = GeneVocab.load()
    for ds_id, path, source in (
        ("kang2018_pbmc_ifnb.h5ad", kang, "h5ad"),
        ("filtered_feature_bc_matrix", datasets.fetch_dir("tenx_v3_mex"), "10x"),
    ):
        adata = read_counts(path)
        nnz = np.diff(sp.csr_matrix(adata.X).indptr)
        keep = nnz > MIN_GENES
        assert ok[ds_id].n_cells_in == adata.n_obs
        assert ok[ds_id].n_cells_kept == int(keep.sum())
        expected = vocab.map(adata.var_names).apply(adata.X)[keep]
        sub = df[df["dataset_id"] == ds_id]
        pos = pd.Series(np.arange(adata.n_obs), index=adata.obs_names)
        rows = pos[sub["obs_id"]].to_numpy()
        order = np.argsort(rows)
        got = rows_to_csr(sub.iloc[order])
        assert np.array_equal(got.indices, expected.indices)
        assert np.array_equal(got.data, expected.data)
        assert (sub["cell_id"] == f"{source}:{ds_id}:" + sub["obs_id"]).all()
    # the MEX directory and the .h5 of the same 10x run give the same cells and counts
    a = df[df["dataset_id"] == "filtered_feature_bc_matrix"].reset_index(drop=True)
    b = df[df["dataset_id"] == "filtered_feature_bc_matrix.h5"].reset_index(drop=True)
    assert a["obs_id"].tolist() == b["obs_id"].tolist()
    assert all(np.array_equal(x, y) for x, y in zip(a["counts"], b["counts"], strict=True))


def test_refresh_of_several_unchanged_bad_inputs_commits_nothing(tmp_path, bad_inputs):
    """Quarantined data sets listed out of name order: the manifest keeps them sorted, the
    refresh compares them in that order."""
    paths = [tmp_path / "z.h5ad", tmp_path / "a.h5ad", tmp_path / "pbmc.h5ad"]
    shutil.copy(bad_inputs["corrupt"], paths[0])
    shutil.copy(bad_inputs["corrupt"], paths[1])
    shutil.copy(datasets.fetch("pbmc68k_counts"), paths[2])
    cfg = BuildConfig(
        output=str(tmp_path / "c"),
        executor="local",
        mlflow=False,
        sources=[H5ADSource(paths=[str(p) for p in paths])],
        qc=QCConfig(min_genes=None),
    )
    first = build_corpus(cfg)
    assert [q.dataset_id for q in first.manifest.quarantined] == ["a.h5ad", "z.h5ad"]
    again = build_corpus(dataclasses.replace(cfg, refresh=True))
    assert not again.committed and again.manifest == first.manifest
    # a listed shard that went missing is an error, not "up to date"
    (shard,) = [s for d in first.manifest.datasets for s in d.shards]
    (tmp_path / "c" / shard.path).unlink()
    with pytest.raises(ShardCheckError, match=f"{shard.path}: missing"):
        build_corpus(dataclasses.replace(cfg, refresh=True))


def test_quarantine_does_not_stop_a_non_strict_build(tmp_path, bad_inputs):
    shutil.copy(datasets.fetch("pbmc68k_counts"), tmp_path / "pbmc.h5ad")
    corrupt = tmp_path / "corrupt.h5ad"
    shutil.copy(bad_inputs["corrupt"], corrupt)
    cfg = BuildConfig(
        output=str(tmp_path / "c"),
        executor="local",
        mlflow=False,
        sources=[H5ADSource(paths=[str(tmp_path / "pbmc.h5ad"), str(corrupt)])],
        qc=QCConfig(min_genes=None),
    )
    result = build_corpus(cfg)
    assert result.exit_code == 0
    assert result.manifest.totals["n_cells_kept"] == 700
    assert [q.dataset_id for q in result.manifest.quarantined] == ["corrupt.h5ad"]

    # A refresh keeps an unchanged bad input quarantined without reading it again; once the
    # file changes (here: replaced by a good one) it is processed.
    out = tmp_path / "c"
    # Nothing changed: the refresh commits no new version (the newest stays current).
    again = build_corpus(dataclasses.replace(cfg, refresh=True))
    assert again.units_processed == 0 and not again.committed
    assert again.manifest == result.manifest
    assert again.manifest_path == result.manifest_path
    assert list_versions(*resolve(str(out))) == [1]
    shutil.copy(datasets.fetch("pbmc68k_counts"), corrupt)
    fixed = build_corpus(dataclasses.replace(cfg, refresh=True))
    assert fixed.committed and fixed.manifest.corpus_version == 2
    assert fixed.manifest.changes["changed"] == ["h5ad:corrupt.h5ad"]
    assert fixed.manifest.changes["unchanged"] == ["h5ad:pbmc.h5ad"]
    assert fixed.manifest.quarantined == [] and fixed.units_processed == 1
    assert fixed.manifest.totals["n_cells_kept"] == 1400
