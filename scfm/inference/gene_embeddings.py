"""Context-specific gene embeddings: the decoder states of genes in a cell or a group of cells.

In xTrimoGene every gene gets a decoder state that depends on the whole cell (expressed genes from
the encoder, unexpressed ones as zeros); the paper uses them for gene-module inference and GEARS.
:func:`gene_embeddings` returns them per cell or averaged over a group (e.g. a cell type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from scfm.data.genes import GeneVocab
from scfm.data.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.inference.batching import length_sorted_batches
from scfm.inference.engine import depth_rows
from scfm.inference.pipeline import ModelSpec, start_run
from scfm.inference.selection import cell_indices, gene_indices
from scfm.inference.settings import AUTO


@dataclass(frozen=True)
class GeneEmbeddings:
    """Gene embeddings of selected genes.

    Attributes
    ----------
    values
        ``(n_genes, D)`` when averaged over the cells, else ``(n_cells, n_genes, D)``; float32.
    genes
        Vocabulary names of the genes, in the order of ``values``.
    cells
        obs names of the cells used, in the order of ``values`` (per-cell output).
    record
        Model and settings (as ``adata.uns["scfm"]`` records for embeddings).
    """

    values: np.ndarray
    genes: list[str]
    cells: list[str]
    record: dict[str, Any]

    def to_dataframe(self) -> pd.DataFrame:
        """Genes × D table (averaged embeddings only)."""
        if self.values.ndim != 2:
            raise ValueError("to_dataframe needs averaged embeddings (aggregate='mean')")
        return pd.DataFrame(self.values, index=pd.Index(self.genes, name="gene"))


def gene_embeddings(
    adata,
    model: ModelSpec,
    *,
    cells: Any = None,
    genes: Sequence[str] | None = None,
    aggregate: Literal["mean"] | None = "mean",
    layer: str | None = None,
    pre_normalized: Any = None,
    total_counts_key: str = "total_counts",
    settings: str = "auto",
    target_depth: Any = AUTO,
    depth_total: str = AUTO,
    precision: str = AUTO,
    gene_matching: str = AUTO,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    variant: str = "gene",
    progress: bool = True,
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> GeneEmbeddings:
    """Decoder gene embeddings for a cell or a group of cells.

    Parameters
    ----------
    adata
        AnnData with raw counts (validated as for :func:`scfm.embed`), or a
        :class:`~scfm.data.prepared.PreparedInput`.
    model
        Model or spec (see :func:`scfm.inference.load_model`); official files use ``variant``.
    cells
        Which cells: None (all), a boolean mask, integer positions or obs names.
    genes
        Which genes (symbols / Ensembl ids, mapped onto the vocabulary); default all 19,264. Each
        cell costs 19,264 × D floats, so pick genes when you keep per-cell output.
    aggregate
        ``"mean"`` averages over the selected cells (a group embedding); None keeps every cell.
    batch_size
        Cells per forward pass (the decoder spans all 19,266 positions of every cell).
    pre_normalized, total_counts_key, settings, target_depth, depth_total, precision, \
    gene_matching
        As in :func:`scfm.embed` (official weights: T = 4, vocabulary totals, fp32).

    Returns
    -------
    GeneEmbeddings
        ``values`` ``(n_genes, D)`` or ``(n_cells, n_genes, D)``, with gene and cell names.
    """
    if aggregate not in ("mean", None):
        raise ValueError(f"aggregate must be 'mean' or None, got {aggregate!r}")
    vocab = GeneVocab.load()
    gene_idx = gene_indices(genes, vocab)
    run = start_run(
        adata,
        model,
        variant=variant,
        layer=layer,
        pre_normalized=pre_normalized,
        total_counts_key=total_counts_key,
        settings=settings,
        target_depth=target_depth,
        depth_total=depth_total,
        precision=precision,
        gene_matching=gene_matching,
        device=device,
        min_mapped_fraction=min_mapped_fraction,
    )
    target = run.prepared.adata
    rows = cell_indices(target, cells)
    D = run.engine.model.cfg.dec_dim
    per_cell = None if aggregate else np.empty((rows.size, gene_idx.size, D), dtype=np.float32)
    total = np.zeros((gene_idx.size, D), dtype=np.float64)
    with tqdm(total=rows.size, unit="cell", desc="gene embeddings", disable=not progress) as bar:
        for block in run.blocks(rows=rows):
            depth = run.depth(rows[block.start : block.stop])
            for sub in length_sorted_batches(block.lengths(), batch_size):
                z = run.engine.gene_embeddings(block.batch(sub), gene_idx, depth_rows(depth, sub))
                if per_cell is not None:
                    per_cell[block.start + sub] = z
                else:
                    total += z.sum(axis=0, dtype=np.float64)
                bar.update(len(sub))
    values = per_cell if per_cell is not None else (total / rows.size).astype(np.float32)
    record = run.record(
        n_cells=int(rows.size), n_genes=int(gene_idx.size), aggregate=aggregate or "none"
    )
    return GeneEmbeddings(
        values=values,
        genes=[vocab.names[i] for i in gene_idx],
        cells=[str(target.obs_names[i]) for i in rows],
        record=record,
    )
