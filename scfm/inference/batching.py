"""From a cells × genes matrix to model batches: vocabulary mapping, packing, length sorting.

Large inputs are never densified: the matrix is read in row blocks (dense, sparse or backed h5ad),
each block is mapped onto the 19,264-gene vocabulary as a sparse matrix
(:meth:`scfm.genes.GeneMapping.apply`), and each cell's nonzero genes become one packed row of
the loader-batch contract (``gene_idx``, ``counts``, ``offsets``, ``total_counts``; see
``scfm.corpus.loader``). Within a block, cells are sorted by their number of nonzero genes and cut
into batches, so a batch pads only to the longest of cells of similar length; results are written
back in the original order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from scfm.corpus.validate import iter_row_blocks
from scfm.genes import GeneMapping

DepthTotal = Literal["all_genes", "vocab_genes"]
DEFAULT_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class VocabBlock:
    """A block of cells mapped onto the vocabulary.

    Attributes
    ----------
    start
        Row of the first cell in the input.
    X
        ``(n, 19264)`` CSR raw counts, sorted indices, no explicit zeros.
    total_counts
        ``(n,)`` float64 totals that define the depth token S and the normalization.
    """

    start: int
    X: sp.csr_matrix
    total_counts: np.ndarray

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    def lengths(self) -> np.ndarray:
        """Nonzero genes per cell."""
        return np.diff(self.X.indptr)

    def loader_batch(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The packed loader batch of ``rows`` (positions within the block; default all)."""
        X = self.X if rows is None else self.X[rows]
        totals = self.total_counts if rows is None else self.total_counts[rows]
        return csr_to_loader_batch(X, totals)


def csr_to_loader_batch(X: sp.csr_matrix, total_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Loader batch (``gene_idx``, ``counts``, ``offsets``, ``total_counts``) of a vocab CSR."""
    X = sp.csr_matrix(X)
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    return {
        "gene_idx": X.indices.astype(np.int32, copy=False),
        "counts": X.data.astype(np.float32, copy=False),
        "offsets": X.indptr.astype(np.int64, copy=False),
        "total_counts": np.asarray(total_counts, dtype=np.float64).reshape(-1),
    }


def row_totals(block: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``(n,)`` float64 row sums of a dense or sparse block."""
    return np.asarray(block.sum(axis=1), dtype=np.float64).reshape(-1)


def iter_vocab_blocks(
    X,
    mapping: GeneMapping,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    depth_total: DepthTotal = "all_genes",
) -> Iterator[VocabBlock]:
    """Row blocks of ``X`` (cells × input genes) mapped onto the vocabulary.

    Parameters
    ----------
    X
        Dense array, scipy sparse matrix, or a backed h5ad matrix (read block by block).
    mapping
        Input genes → vocabulary (``GeneVocab.load().map(var_names)``).
    depth_total
        ``all_genes`` (default, as the scfm corpus): a cell's total is the sum over every input
        gene, vocabulary or not. ``vocab_genes``: the sum over the vocabulary genes only, as the
        official scFoundation script (it reindexes to the vocabulary first).
    """
    if depth_total not in ("all_genes", "vocab_genes"):
        raise ValueError(f"depth_total must be 'all_genes' or 'vocab_genes', got {depth_total!r}")
    for start, block in iter_row_blocks(X, block_rows):
        mapped = mapping.apply(block)
        totals = row_totals(block if depth_total == "all_genes" else mapped)
        yield VocabBlock(start, mapped, totals)


def iter_selected_vocab_blocks(
    X,
    mapping: GeneMapping,
    rows: np.ndarray,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    depth_total: DepthTotal = "all_genes",
) -> Iterator[VocabBlock]:
    """Like :func:`iter_vocab_blocks` for the sorted row indices ``rows`` only.

    ``VocabBlock.start`` counts positions in ``rows``, not rows of ``X``.
    """
    if depth_total not in ("all_genes", "vocab_genes"):
        raise ValueError(f"depth_total must be 'all_genes' or 'vocab_genes', got {depth_total!r}")
    if sp.issparse(X) and not isinstance(X, sp.csr_matrix | sp.csr_array):
        X = sp.csr_matrix(X)
    for start in range(0, rows.size, block_rows):
        block = X[rows[start : start + block_rows]]
        mapped = mapping.apply(block)
        totals = row_totals(block if depth_total == "all_genes" else mapped)
        yield VocabBlock(start, mapped, totals)


def length_sorted_batches(
    lengths: np.ndarray, batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Cut cells into batches of similar length, longest first.

    Parameters
    ----------
    lengths
        ``(n,)`` tokens per cell.
    batch_size
        Most cells per batch.
    max_tokens
        Optional cap on ``cells × longest length`` per batch (padded tokens), so batches of long
        cells get fewer cells; a single cell longer than the cap still forms its own batch.

    Returns
    -------
    list of np.ndarray
        Index arrays into ``lengths``; together a permutation of ``range(n)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    # descending, stable: the first batch is the largest, so memory trouble shows up at once
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    i = 0
    n = order.size
    while i < n:
        j = min(i + batch_size, n)
        if max_tokens is not None:
            longest = max(int(lengths[order[i]]), 1)
            j = min(j, i + max(1, max_tokens // longest))
        batches.append(order[i:j])
        i = j
    return batches
