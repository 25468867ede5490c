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

from scfm.corpus.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.genes import GeneVocab
from scfm.inference.batching import DepthTotal, iter_selected_vocab_blocks, length_sorted_batches
from scfm.inference.embed import ModelSpec, run_record, validate
from scfm.inference.engine import InferenceEngine, TargetDepth
from scfm.inference.loading import load_model_with_info
from scfm.inference.runtime import Precision
from scfm.inference.selection import cell_indices, gene_indices


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
    batch_size: int = 4,
    device: str | torch.device = "auto",
    precision: Precision = "auto",
    target_depth: TargetDepth = None,
    depth_total: DepthTotal = "all_genes",
    variant: str = "gene",
    progress: bool = True,
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> GeneEmbeddings:
    """Decoder gene embeddings for a cell or a group of cells.

    Parameters
    ----------
    adata
        AnnData with raw counts (validated as for :func:`scfm.embed`).
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
    target_depth
        T token, as in :func:`scfm.embed`.

    Returns
    -------
    GeneEmbeddings
        ``values`` ``(n_genes, D)`` or ``(n_cells, n_genes, D)``, with gene and cell names.
    """
    if aggregate not in ("mean", None):
        raise ValueError(f"aggregate must be 'mean' or None, got {aggregate!r}")
    vocab = GeneVocab.load()
    gene_idx = gene_indices(genes, vocab)
    rows = cell_indices(adata, cells)
    checked = validate(adata, layer=layer, min_mapped_fraction=min_mapped_fraction)
    net, info = load_model_with_info(model, device=device, variant=variant)
    engine = InferenceEngine(net, device=device, precision=precision)
    X = adata.X if layer is None else adata.layers[layer]
    D = net.cfg.dec_dim
    per_cell = None if aggregate else np.empty((rows.size, gene_idx.size, D), dtype=np.float32)
    total = np.zeros((gene_idx.size, D), dtype=np.float64)
    with tqdm(total=rows.size, unit="cell", desc="gene embeddings", disable=not progress) as bar:
        for block in iter_selected_vocab_blocks(X, checked.mapping, rows, depth_total=depth_total):
            for sub in length_sorted_batches(block.lengths(), batch_size):
                z = engine.gene_embeddings(block.loader_batch(sub), gene_idx, target_depth)
                if per_cell is not None:
                    per_cell[block.start + sub] = z
                else:
                    total += z.sum(axis=0, dtype=np.float64)
                bar.update(len(sub))
    values = per_cell if per_cell is not None else (total / rows.size).astype(np.float32)
    record = run_record(
        info,
        engine,
        checked,
        settings={
            "layer": layer or "X",
            "n_cells": int(rows.size),
            "n_genes": int(gene_idx.size),
            "aggregate": aggregate or "none",
            "target_depth": "S" if target_depth is None else str(target_depth),
            "depth_total": depth_total,
        },
    )
    return GeneEmbeddings(
        values=values,
        genes=[vocab.names[i] for i in gene_idx],
        cells=[str(adata.obs_names[i]) for i in rows],
        record=record,
    )
