from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scfm import datasets
from scfm.data.io import read_counts
from scfm.data.validate import (
    InputValidationError,
    check_counts,
    validate_anndata,
    validate_input,
)


@pytest.fixture(scope="module")
def kang() -> ad.AnnData:
    return read_counts(datasets.fetch("kang2018"))


def _small(kang, n=50):
    return kang[:n].copy()


def test_real_counts_pass_with_a_report(kang):
    result = validate_anndata(kang)
    r = result.report
    assert (r.n_cells, r.n_genes, r.nnz) == (1975, 6998, 643449)
    assert (r.min_value, r.max_value) == (1.0, 2407.0)
    assert r.n_empty_cells == 0
    assert r.fraction_genes_mapped == pytest.approx(result.mapping.report.fraction_mapped)
    assert "raw counts: ok" in str(r)


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_dense_and_sparse_formats_agree(kang, fmt):
    X = {"csr": kang.X, "csc": sp.csc_matrix(kang.X), "dense": kang.X.toarray()}[fmt]
    r = check_counts(X, block_rows=300)
    assert (r.nnz, r.max_value, r.n_empty_cells) == (643449, 2407.0, 0)


class _CountingRows:
    """A backed matrix that records every row range read from it (and reads nothing else)."""

    def __init__(self, X):
        self._X, self.reads = X, []

    shape = property(lambda self: self._X.shape)
    dtype = property(lambda self: self._X.dtype)

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step is None, f"not a row block: {key!r}"
        self.reads.append((key.start, min(key.stop, self.shape[0])))
        return self._X[key]


def test_backed_matrix_is_checked_in_blocks():
    """Fails if validation reads the matrix whole (or any row twice): every read is counted."""
    adata = read_counts(datasets.fetch("kang2018"), backed=True)
    X = _CountingRows(adata.X)
    r = validate_input(X, adata.var_names, adata.obs_names, block_rows=256).report
    assert (r.n_cells, r.nnz) == (1975, 643449)
    assert X.reads == [(s, min(s + 256, 1975)) for s in range(0, 1975, 256)]


def test_log_normalized_input_is_rejected_with_the_fix():
    adata = read_counts(datasets.fetch("pbmc68k_reduced"), layer="raw")
    with pytest.raises(InputValidationError, match="looks log-normalized; pass raw counts in X"):
        validate_anndata(adata)


def test_scaled_input_is_rejected():
    adata = read_counts(datasets.fetch("pbmc68k_reduced"))
    with pytest.raises(InputValidationError, match=r"negative values \(min -2.03"):
        validate_anndata(adata)


def test_cpm_like_input_is_rejected(kang):
    small = _small(kang)
    X = small.X.toarray().astype(np.float64)
    X = X / X.sum(1, keepdims=True) * 1e6
    with pytest.raises(InputValidationError, match="looks normalized"):
        validate_input(X, small.var_names, small.obs_names)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "inf")])
def test_nan_and_inf_are_rejected(kang, value, word):
    small = _small(kang)
    X = small.X.astype(np.float32).toarray()
    X[3, 7] = value
    with pytest.raises(InputValidationError, match=f"contains {word} values"):
        validate_input(X, small.var_names, small.obs_names)


def test_duplicated_names_are_rejected(kang):
    small = _small(kang)
    genes = list(small.var_names)
    genes[5] = genes[4]
    with pytest.raises(InputValidationError, match="duplicated gene names .*var_names_make_unique"):
        validate_input(small.X, genes, small.obs_names)
    cells = list(small.obs_names)
    cells[1] = cells[0]
    with pytest.raises(InputValidationError, match="duplicated cell names"):
        validate_input(small.X, small.var_names, cells)


def test_empty_matrix_is_rejected(kang):
    with pytest.raises(InputValidationError, match=r"empty \(0 cells × 6998 genes\)"):
        validate_input(kang.X[:0], kang.var_names, [])


def test_zero_count_cells_are_reported(kang):
    small = _small(kang)
    X = small.X.tolil()
    X[[2, 9], :] = 0
    result = validate_input(X.tocsr(), small.var_names, small.obs_names)
    assert result.report.n_empty_cells == 2
    assert result.report.empty_cell_examples == [small.obs_names[2], small.obs_names[9]]
    assert "2 of 50 cells have zero counts" in str(result.report)


def test_mouse_symbols_are_rejected(kang):
    small = _small(kang)
    mouse = [g.capitalize() for g in small.var_names]  # Cd3e, Actb, ... the mouse convention
    with pytest.raises(InputValidationError, match="look like mouse symbols; wrong species"):
        validate_input(small.X, mouse, small.obs_names)


def test_mouse_ensembl_ids_are_rejected(kang):
    small = _small(kang)
    ids = [f"ENSMUSG{i:011d}" for i in range(small.n_vars)]
    with pytest.raises(InputValidationError, match=r"non-human Ensembl ids \(ENSMUSG"):
        validate_input(small.X, ids, small.obs_names)


def test_too_few_mapped_genes_are_rejected_with_the_fraction(kang):
    small = _small(kang)
    genes = [f"contig_{i}" if i % 10 else g for i, g in enumerate(small.var_names)]
    with pytest.raises(InputValidationError, match=r"only \d+\.\d% of the 6,998 input genes map"):
        validate_input(small.X, genes, small.obs_names)
    # The threshold is the user's to set.
    validate_input(small.X, genes, small.obs_names, min_mapped_fraction=0.05)


def test_shape_mismatch_is_rejected(kang):
    with pytest.raises(InputValidationError, match="does not match"):
        validate_input(kang.X, kang.var_names[:-1], kang.obs_names)
