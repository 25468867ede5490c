"""Picking cells and genes by the names users have (obs names, masks, gene symbols)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scfm.data.genes import GeneVocab


def cell_indices(adata, cells: Any = None) -> np.ndarray:
    """Sorted unique row indices of ``cells``.

    ``cells`` may be None (all), a boolean mask (array or pandas Series), integer positions, or
    obs names. Raises ``ValueError`` naming what does not match.
    """
    n = adata.n_obs
    if cells is None:
        return np.arange(n)
    if isinstance(cells, str):
        cells = [cells]
    values = cells.to_numpy() if hasattr(cells, "to_numpy") else np.asarray(cells)
    if values.dtype == bool:
        if values.shape != (n,):
            raise ValueError(f"boolean cell mask has shape {values.shape}, adata has {n} cells")
        idx = np.flatnonzero(values)
    elif np.issubdtype(values.dtype, np.integer):
        idx = values.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise ValueError(f"cell positions out of range for {n} cells")
        idx = np.where(idx < 0, idx + n, idx)
    else:
        names = [str(v) for v in values]
        pos = adata.obs_names.get_indexer(names)
        if (pos < 0).any():
            missing = [c for c, p in zip(names, pos, strict=True) if p < 0][:5]
            raise ValueError(f"cells not in adata.obs_names: {missing}")
        idx = pos
    idx = np.unique(idx)
    if idx.size == 0:
        raise ValueError("the cell selection is empty: select at least one cell")
    return idx


def gene_indices(genes: Sequence[str] | None, vocab: GeneVocab | None = None) -> np.ndarray:
    """Vocabulary indices of gene names or Ensembl ids (aliases resolved), in the given order.

    None → all 19,264 vocabulary genes. Raises ``ValueError`` listing genes that do not map.
    """
    vocab = vocab or GeneVocab.load()
    if genes is None:
        return np.arange(len(vocab))
    if isinstance(genes, str):
        genes = [genes]
    mapping = vocab.map(list(genes))
    if not mapping.mapped.all():
        bad = [g for g, ok in zip(mapping.genes, mapping.mapped, strict=True) if not ok]
        raise ValueError(
            f"{len(bad)} genes are not in the {len(vocab):,}-gene vocabulary "
            f"(e.g. {', '.join(bad[:5])}): use HGNC symbols or Ensembl ids"
        )
    return mapping.index.astype(np.int64)
