"""The compiled relabel kernel against a scipy reference, on random blocks (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from scfm.corpus.relabel import MAX_LABELS, relabel_rows


def _reference(X: sp.csr_matrix, lut: np.ndarray, mito: np.ndarray, n_labels: int):
    mapped = np.flatnonzero(lut >= 0)
    M = sp.csr_matrix((np.ones(len(mapped)), (mapped, lut[mapped])), shape=(X.shape[1], n_labels))
    out = sp.csr_matrix(X.astype(np.float64) @ M)
    out.eliminate_zeros()
    out.sort_indices()
    total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    n_in = np.diff(sp.csr_matrix(X != 0).indptr)
    mt = np.asarray(X @ mito.astype(np.float64)).ravel()
    return out, total, n_in, mt


@st.composite
def blocks(draw):
    n_rows = draw(st.integers(0, 12))
    n_cols = draw(st.integers(1, 40))
    n_labels = draw(st.sampled_from([5, 300, 19_264]))  # one and two radix digits
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = rng.integers(0, 4, size=(n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < 0.5)
    X = sp.csr_matrix(dense.astype(draw(st.sampled_from([np.float32, np.int64, np.float64]))))
    if X.nnz:  # explicit zeros, and columns out of order within rows
        X.data[rng.random(X.nnz) < 0.2] = 0
        for r in range(n_rows):
            a, b = X.indptr[r], X.indptr[r + 1]
            order = rng.permutation(b - a)
            X.indices[a:b] = X.indices[a:b][order]
            X.data[a:b] = X.data[a:b][order]
        X.has_sorted_indices = False
    # labels with collisions (few distinct targets) and dropped columns (-1)
    lut = rng.integers(-1, min(n_labels, max(2, n_cols // 2)), size=n_cols)
    lut = np.where(lut >= 0, (lut * 7919) % n_labels, -1)
    mito = rng.random(n_cols) < 0.2
    return X, lut, mito, n_labels


@settings(max_examples=150, deadline=None)
@given(blocks())
def test_relabel_matches_sparse_product(block):
    X, lut, mito, n_labels = block
    rows = relabel_rows(X, lut, mito)
    ref, total, n_in, mt = _reference(X, lut, mito, n_labels)
    got = rows.to_csr(n_labels)
    assert np.array_equal(got.indptr, ref.indptr)
    assert np.array_equal(got.indices, ref.indices)  # sorted, one entry per label
    assert np.allclose(got.data, ref.data)
    assert np.allclose(rows.total_counts, total)
    assert np.array_equal(rows.n_nonzero_input, n_in)
    assert np.allclose(rows.mito_counts, mt)
    assert rows.n_invalid == 0

    keep = np.arange(X.shape[0]) % 3 != 1
    sub = rows.take_rows(keep).to_csr(n_labels)
    assert (sub != ref[keep]).nnz == 0 and np.array_equal(sub.indptr, ref[keep].indptr)


def test_bad_lookup_tables_are_rejected():
    X = sp.csr_matrix(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="cover 2 / 3 columns, X has 3"):
        relabel_rows(X, np.zeros(2, dtype=np.int32), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match=f"below {MAX_LABELS}"):
        relabel_rows(X, np.array([0, 1, MAX_LABELS]), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="-1 for dropped"):
        relabel_rows(X, np.array([0, -2, 1]), np.zeros(3, dtype=bool))


@pytest.mark.parametrize(
    "bad, n", [(-1.0, 1), (0.5, 1), (np.nan, 1), (np.inf, 1), (-np.inf, 1), (2.0, 0)]
)
def test_values_that_are_not_raw_counts_are_counted(bad, n):
    X = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [2.0, 0.0, 1.0]], dtype=np.float32))
    X.data[2] = bad  # row 1, column 0
    rows = relabel_rows(X, np.array([0, 1, -1]), np.zeros(3, dtype=bool))
    assert rows.n_invalid == n
