"""PackedCells / NormalizedCells: dtypes, checks, and round trips through CSR and Arrow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch

from scfm.data.packed import N_GENES, NormalizedCells, PackedCells, depth_token


def _random_csr(n: int = 7, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n, N_GENES, density=0.01, random_state=rng, format="csr", dtype=np.float64)
    X.data = np.ceil(X.data * 20)
    X = sp.csr_matrix(sp.diags((np.arange(n) != 3).astype(float)) @ X)  # cell 3 is empty
    X.eliminate_zeros()
    return X


def test_csr_round_trip_keeps_values_and_casts_dtypes() -> None:
    X = _random_csr()
    cells = PackedCells.from_csr(X, cell_id=[f"c{i}" for i in range(7)])
    assert cells.gene_idx.dtype == np.int32 and cells.counts.dtype == np.float32
    assert cells.offsets.dtype == np.int64 and cells.total_counts.dtype == np.float64
    assert cells.n_cells == 7 and cells.nnz == X.nnz and cells.lengths()[3] == 0
    np.testing.assert_array_equal(cells.total_counts, X.sum(axis=1).A1)  # row sums by default
    assert (cells.to_csr() != X).nnz == 0
    sub = cells.select(np.array([5, 0]))
    assert (sub.to_csr() != X[[5, 0]]).nnz == 0 and list(sub.cell_id) == ["c5", "c0"]
    np.testing.assert_array_equal(cells.rows(), np.repeat(np.arange(7), np.diff(X.indptr)))


def test_arrow_rows_of_the_corpus_schema() -> None:
    X = _random_csr(seed=1)
    offsets = pa.array(X.indptr.astype(np.int32))
    table = pa.table(
        {
            "cell_id": [f"d:{i}" for i in range(7)],
            "gene_idx": pa.ListArray.from_arrays(offsets, pa.array(X.indices.astype(np.int16))),
            "counts": pa.ListArray.from_arrays(offsets, pa.array(X.data.astype(np.float32))),
            "total_counts": X.sum(axis=1).A1 + 5.0,
        }
    )
    cells = PackedCells.from_arrow(table.slice(2, 4))  # a slice: offsets do not start at 0
    assert cells.offsets[0] == 0 and cells.n_cells == 4
    assert (cells.to_csr() != X[2:6]).nnz == 0
    np.testing.assert_array_equal(cells.total_counts, X[2:6].sum(axis=1).A1 + 5.0)
    assert list(cells.cell_id) == ["d:2", "d:3", "d:4", "d:5"]
    batch = table.to_batches()[0]
    assert PackedCells.from_arrow(batch).n_cells == 7


def test_malformed_input_is_refused_with_the_reason() -> None:
    cells = PackedCells.from_csr(_random_csr())
    with pytest.raises(ValueError, match="offsets must run from 0"):
        dataclasses.replace(cells, offsets=cells.offsets[:-1])
    with pytest.raises(ValueError, match="must not decrease"):
        PackedCells([1, 2, 3], [1.0, 1.0, 1.0], [0, 2, 1, 3], [2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dataclasses.replace(cells, gene_idx=cells.gene_idx + N_GENES)
    with pytest.raises(ValueError, match="total_counts has 6 cells"):
        dataclasses.replace(cells, total_counts=cells.total_counts[:6])
    with pytest.raises(ValueError, match="values"):
        dataclasses.replace(cells, counts=cells.counts[:-1])
    with pytest.raises(ValueError, match="vocabulary matrix"):
        PackedCells.from_csr(sp.csr_matrix((2, 10)))
    as_tensors = PackedCells(*(torch.from_numpy(getattr(cells, f)) for f in
                               ("gene_idx", "counts", "offsets", "total_counts")))  # fmt: skip
    assert (as_tensors.to_csr() != cells.to_csr()).nnz == 0


def test_normalized_cells_and_depth_tokens() -> None:
    cells = NormalizedCells(np.array([1, 4, 2]), np.array([0.5, 1.0, 2.0]), [0, 2, 3], [3.0, 2.5])
    assert cells.n_cells == 2 and cells.values.dtype == np.float32
    np.testing.assert_array_equal(cells.rows(), [0, 0, 1])
    with pytest.raises(ValueError, match="S has 2 cells, offsets have 1"):
        NormalizedCells(np.array([1]), np.array([0.5]), [0, 1], [3.0, 1.0])
    np.testing.assert_allclose(depth_token(np.array([0.0, 1.0, 1000.0])), [0.0, 0.0, 3.0])
