"""The benchmark corpus generator: real Kang cells resampled into Census-shaped SOMA and h5ad."""

from __future__ import annotations

import anndata as ad
import cellxgene_census
import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks import synthetic
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import CensusSource

pytestmark = pytest.mark.slow


def _expected(pool, n, info, seed, chunk_cells=10_000):
    chunks = synthetic.synthetic_chunks(
        pool, n, k=info["k"], p=info["p"], seed=seed, chunk_cells=chunk_cells
    )
    return sp.vstack([x for x, _ in chunks], format="csr")


def test_census_store_holds_the_generated_cells_and_builds(tmp_path):
    info = synthetic.write_census_store(
        tmp_path / "soma", 450, target_nnz=600, cells_per_dataset=300, chunk_cells=200, seed=3
    )
    pool = synthetic.load_pool()
    expected = _expected(pool, 450, info, seed=3, chunk_cells=200)
    assert 500 < info["nnz_per_cell"] < 800  # calibrated near the target
    with cellxgene_census.open_soma(uri=info["uri"]) as census:
        exp = census["census_data"]["homo_sapiens"]
        coo = exp.ms["RNA"].X["raw"].read().tables().concat()
        obs = exp.obs.read().concat().to_pandas()
        datasets = census["census_info"]["datasets"].read().concat().to_pandas()
        var = exp.ms["RNA"].var.read().concat().to_pandas()
    X = sp.csr_matrix(
        (
            coo["soma_data"].to_numpy(),
            (coo["soma_dim_0"].to_numpy(), coo["soma_dim_1"].to_numpy()),
        ),
        shape=expected.shape,
    )
    assert (X != expected).nnz == 0  # written unsorted in global order: nothing lost or moved
    assert datasets["dataset_total_cell_count"].tolist() == [300, 150]
    assert obs["dataset_id"].value_counts()[datasets["dataset_id"]].tolist() == [300, 150]
    assert np.array_equal(obs["nnz"].to_numpy(), np.diff(expected.indptr))
    assert var["feature_id"].str.startswith("ENSG").all()

    result = build_corpus(
        BuildConfig(
            output=str(tmp_path / "corpus"),
            sources=[CensusSource(uri=info["uri"])],
            qc=QCConfig(min_genes=100),
            executor="local",
            block_cells=200,
            mlflow=False,
            progress=False,
        )
    )
    totals = result.manifest.totals
    assert totals["n_cells_in"] == 450
    assert totals["n_cells_kept"] + sum(totals["dropped"].values()) == 450


def test_h5ad_files_hold_the_generated_cells(tmp_path):
    info = synthetic.write_h5ad_dir(tmp_path / "h5ad", 250, target_nnz=600, cells_per_file=100)
    pool = synthetic.load_pool()
    files = sorted((tmp_path / "h5ad").glob("*.h5ad"))
    assert [ad.read_h5ad(f).n_obs for f in files] == [100, 100, 50]
    for f, path in enumerate(files):
        a = ad.read_h5ad(path)
        n = a.n_obs
        assert (sp.csr_matrix(a.X) != _expected(pool, n, info, seed=f)).nnz == 0
        assert a.var_names.tolist() == list(pool.feature_names)
