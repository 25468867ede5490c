"""Packed cells: the one batch type between the data layer, the corpus loader and the model.

B cells in CSR form (nonzero genes only, never 19,264 columns)::

    gene_idx      (nnz,)  int32    vocabulary indices of each cell's nonzero genes, sorted per cell
    counts        (nnz,)  float32  raw counts aligned with gene_idx
    offsets       (B+1,)  int64    row pointers: cell i = [offsets[i], offsets[i+1])
    total_counts  (B,)    float64  each cell's total count (before vocabulary restriction)
    cell_id       (B,)    str      optional

:class:`NormalizedCells` carries the same layout with model-scale values (``log1p`` of normalized
expression) and the depth token S instead of raw counts and totals: what inference feeds the model
when the input was declared normalized (see :mod:`scfm.data.prepared`).

Gene-index widths: int16 on disk (the corpus schema), int32 here, int64 only as torch index
tensors inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

N_GENES = 19264  # the scFoundation vocabulary (OS_scRNA_gene_index.19264.tsv)


def depth_token(total: np.ndarray) -> np.ndarray:
    """log10 of a total count (clipped at 1 count, so an empty cell gets 0 rather than -inf)."""
    return np.log10(np.maximum(np.asarray(total, dtype=np.float64), 1.0))


def _as(name: str, x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr.astype(dtype, copy=False)


def _check_csr(gene_idx: np.ndarray, offsets: np.ndarray, n_values: int, what: str) -> None:
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != gene_idx.size:
        raise ValueError(
            f"malformed {what}: offsets must run from 0 to len(gene_idx) ({gene_idx.size}), "
            f"got {offsets[:1].tolist()} … {offsets[-1:].tolist()}"
        )
    if n_values != gene_idx.size:
        raise ValueError(f"malformed {what}: {gene_idx.size} gene indices but {n_values} values")
    if np.any(np.diff(offsets) < 0):
        raise ValueError(f"malformed {what}: offsets must not decrease")
    if gene_idx.size and (gene_idx.min() < 0 or gene_idx.max() >= N_GENES):
        raise ValueError(f"{what}: gene_idx outside the vocabulary [0, {N_GENES})")


@dataclass(frozen=True)
class PackedCells:
    """Raw counts of B cells over the vocabulary, packed (see the module docstring).

    Arrays are converted to the documented dtypes and checked on construction; numpy arrays and
    torch tensors are accepted.
    """

    gene_idx: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    total_counts: np.ndarray
    cell_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "gene_idx", _as("gene_idx", self.gene_idx, np.int32))
        set_(self, "counts", _as("counts", self.counts, np.float32))
        set_(self, "offsets", _as("offsets", self.offsets, np.int64))
        set_(self, "total_counts", _as("total_counts", self.total_counts, np.float64))
        _check_csr(self.gene_idx, self.offsets, self.counts.size, "packed cells")
        if self.total_counts.size != self.n_cells:
            raise ValueError(
                f"total_counts has {self.total_counts.size} cells, offsets have {self.n_cells}"
            )
        if self.cell_id is not None:
            ids = np.asarray(self.cell_id, dtype=object)
            if ids.shape != (self.n_cells,):
                raise ValueError(f"cell_id has {ids.size} entries for {self.n_cells} cells")
            set_(self, "cell_id", ids)

    @property
    def n_cells(self) -> int:
        return self.offsets.size - 1

    @property
    def nnz(self) -> int:
        return self.gene_idx.size

    def lengths(self) -> np.ndarray:
        """Nonzero genes per cell."""
        return np.diff(self.offsets)

    def rows(self) -> np.ndarray:
        """``(nnz,)`` the cell of every entry."""
        return np.repeat(np.arange(self.n_cells), self.lengths())

    @classmethod
    def from_csr(
        cls,
        X: sp.spmatrix,
        total_counts: np.ndarray | None = None,
        cell_id: Sequence[str] | None = None,
    ) -> PackedCells:
        """From a cells × 19,264 sparse matrix of counts (totals default to its row sums)."""
        X = sp.csr_matrix(X)
        if X.shape[1] != N_GENES:
            raise ValueError(f"expected a cells × {N_GENES} vocabulary matrix, got {X.shape}")
        if not X.has_sorted_indices:
            X = X.sorted_indices()
        if total_counts is None:
            total_counts = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        return cls(X.indices, X.data, X.indptr, total_counts, cell_id)

    @classmethod
    def from_arrow(cls, table: Any) -> PackedCells:
        """From rows of the corpus schema (a pyarrow Table or RecordBatch): ``gene_idx`` and
        ``counts`` list columns, ``total_counts``, and ``cell_id`` when present."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        gi = table.column("gene_idx").combine_chunks()
        ct = table.column("counts").combine_chunks()
        offsets = gi.offsets.to_numpy()
        if not np.array_equal(ct.offsets.to_numpy(), offsets):
            raise ValueError("gene_idx and counts lists are not aligned")
        cell_id = (
            np.asarray(table.column("cell_id").to_pylist(), dtype=object)
            if "cell_id" in table.column_names
            else None
        )
        return cls(
            gene_idx=pc.list_flatten(gi).to_numpy(zero_copy_only=False),
            counts=pc.list_flatten(ct).to_numpy(zero_copy_only=False),
            offsets=offsets.astype(np.int64) - offsets[0],
            total_counts=table.column("total_counts").to_numpy(),
            cell_id=cell_id,
        )

    def to_csr(self) -> sp.csr_matrix:
        """The ``B × 19,264`` CSR matrix of counts (no copy of the arrays where possible)."""
        return sp.csr_matrix(
            (self.counts, self.gene_idx, self.offsets), shape=(self.n_cells, N_GENES)
        )

    def select(self, rows: np.ndarray) -> PackedCells:
        """The cells at positions ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        X = self.to_csr()[rows]
        ids = None if self.cell_id is None else self.cell_id[rows]
        return PackedCells(X.indices, X.data, X.indptr, self.total_counts[rows], ids)


@dataclass(frozen=True)
class NormalizedCells:
    """Model-scale inputs of B cells: ``log1p`` values and the depth token S per cell."""

    gene_idx: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    S: np.ndarray

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "gene_idx", _as("gene_idx", self.gene_idx, np.int32))
        set_(self, "values", _as("values", self.values, np.float32))
        set_(self, "offsets", _as("offsets", self.offsets, np.int64))
        set_(self, "S", _as("S", self.S, np.float32))
        _check_csr(self.gene_idx, self.offsets, self.values.size, "normalized cells")
        if self.S.size != self.n_cells:
            raise ValueError(f"S has {self.S.size} cells, offsets have {self.n_cells}")

    @property
    def n_cells(self) -> int:
        return self.offsets.size - 1

    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_cells), np.diff(self.offsets))
