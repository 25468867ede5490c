from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scfm import datasets
from scfm.data.io import CorruptInputError, detect_format, read_counts


def test_10x_mtx_and_h5_give_the_same_matrix():
    mtx = read_counts(datasets.fetch_dir("tenx_v3_mex"))
    h5 = read_counts(datasets.fetch("tenx_v3_h5"))
    assert mtx.shape == h5.shape == (1107, 507)
    assert mtx.X.dtype == h5.X.dtype == np.int32
    assert (mtx.X != h5.X).nnz == 0 and mtx.X.nnz == 23866
    assert list(mtx.var_names) == list(h5.var_names)
    assert mtx.var_names[0].startswith("ENSG")
    assert list(mtx.var["gene_symbols"]) == list(h5.var["gene_symbols"])
    assert list(mtx.obs_names) == list(h5.obs_names)


def test_10x_v2_h5_matches_v1_mex_directory():
    h5 = read_counts(datasets.fetch("tenx_v1_h5"))
    mex = read_counts(datasets.fetch("tenx_v1_matrix").parent)
    assert h5.shape == mex.shape == (12, 343)
    assert (h5.X != mex.X).nnz == 0


def test_multi_genome_h5_needs_a_genome():
    path = datasets.fetch("tenx_v1_multi_genome")
    with pytest.raises(ValueError, match="several genomes .* pick one with genome="):
        read_counts(path)
    assert read_counts(path, genome="hg19_chr21").shape == (12, 343)
    with pytest.raises(ValueError, match="no genome 'mm10'"):
        read_counts(path, genome="mm10")


def test_h5ad_layers_and_raw():
    path = datasets.fetch("pbmc68k_reduced")
    raw = read_counts(path, layer="raw")
    assert raw.shape == (700, 765)
    # raw.X is log1p(counts / n_counts * 1e4): undoing it gives the shipped counts file exactly.
    X = raw.X.toarray() if hasattr(raw.X, "toarray") else np.asarray(raw.X)
    scaled = np.expm1(X) * raw.obs["n_counts"].to_numpy()[:, None] / 1e4
    assert np.abs(scaled - np.rint(scaled)).max() < 0.1
    counts = read_counts(datasets.fetch("pbmc68k_counts"))
    np.testing.assert_array_equal(np.rint(scaled), counts.X.toarray())
    with pytest.raises(ValueError, match="has no layer 'counts'"):
        read_counts(path, layer="counts")


def test_backed_h5ad_keeps_x_on_disk():
    adata = read_counts(datasets.fetch("kang2018"), backed=True)
    assert adata.isbacked and adata.shape == (1975, 6998)


def test_corrupt_h5ad_names_the_file(tmp_path):
    good = datasets.fetch("pbmc68k_counts").read_bytes()
    bad = tmp_path / "truncated.h5ad"
    bad.write_bytes(good[: len(good) // 3])
    with pytest.raises(CorruptInputError, match="truncated.h5ad"):
        read_counts(bad)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(CorruptInputError, match="junk.h5 as a 10x HDF5"):
        read_counts(junk)


def test_h5_without_10x_layout_is_reported(tmp_path):
    path = tmp_path / "other.h5"
    ad.AnnData(np.ones((2, 2))).write_h5ad(path)
    with pytest.raises(CorruptInputError, match="not in a 10x layout"):
        read_counts(path)


def test_format_detection(tmp_path):
    assert detect_format(datasets.fetch("kang2018")) == "h5ad"
    assert detect_format(datasets.fetch_dir("tenx_v3_mex")) == "10x_mtx"
    with pytest.raises(ValueError, match="directory without matrix.mtx"):
        detect_format(tmp_path)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unknown input format"):
        detect_format(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing.h5ad")
