"""Cell embeddings for an AnnData: :func:`embed` writes ``adata.obsm["X_scfm"]``.

adata (counts, any gene ids) ──prepare──► validated input + gene mapping report
  │ row blocks (never the whole matrix densified; backed h5ad works)
  │ map genes onto the 19,264-gene vocabulary (sparse), normalize, depth tokens
  │ sort cells by nonzero count, batches of similar length
  ▼
encoder only, inference_mode (bf16 autocast on CUDA unless fp32)  ──► concat[S, T, max, mean]
  │ restore the input order
  ▼
adata.obsm[key_added], adata.uns["scfm"][key_added] (model, every setting, mapping)

A model read from an official scFoundation ``models.ckpt`` gets the official settings by default
(T = 4, totals over vocabulary genes, fp32): see :mod:`scfm.inference.settings`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from scfm.data.background import background
from scfm.data.packed import N_GENES, PackedCells
from scfm.data.prepared import DEFAULT_BLOCK_ROWS, ModelBlock, counts_block
from scfm.data.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.inference.batching import length_sorted_batches
from scfm.inference.engine import (
    POOL_PARTS,
    InferenceEngine,
    PoolPart,
    TargetDepth,
    check_pool,
    depth_rows,
)
from scfm.inference.pipeline import ModelSpec, start_run, store_record
from scfm.inference.settings import AUTO

log = logging.getLogger(__name__)


def embed(
    adata,
    model: ModelSpec,
    *,
    layer: str | None = None,
    pre_normalized: Any = None,
    total_counts_key: str = "total_counts",
    settings: str = "auto",
    target_depth: Any = AUTO,
    depth_total: str = AUTO,
    precision: str = AUTO,
    gene_matching: str = AUTO,
    pool: Sequence[PoolPart] = POOL_PARTS,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    key_added: str = "X_scfm",
    progress: bool = True,
    max_tokens: int | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    variant: str = "cell",
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> np.ndarray:
    """Embed every cell of ``adata`` with a pretrained xTrimoGene model.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` (or ``layer``); dense, sparse or backed
        (``anndata.read_h5ad(path, backed="r")``). Gene ids: symbols or Ensembl ids. Or a
        :class:`~scfm.data.prepared.PreparedInput` from :func:`scfm.inference.prepare`.
    model
        An :class:`~scfm.model.XTrimoGene`, a checkpoint folder/file, an official
        ``models.ckpt`` or an MLflow URI ``models:/name/version`` (see :func:`load_model`).
    layer
        Layer holding the values; default ``X``.
    pre_normalized
        None (raw counts, the only undeclared input), ``"T"`` (log1p-normalized), ``"A"``
        (normalized + totals in ``obs[total_counts_key]``) or ``"bulk"`` (bulk RNA-seq counts
        or TPM): the official ``--pre_normalized`` / ``--input_type`` modes.
    settings
        ``auto`` (``official`` for an official checkpoint, else ``scfm``), ``scfm`` or
        ``official``; fills every setting left at ``"auto"`` (:mod:`scfm.inference.settings`).
    target_depth
        The T token: None (T = S, the cell's own depth), a log10 depth, one per cell, or the
        official forms ``"t4"``, ``"f10"``, ``"a1"`` (see
        :func:`scfm.inference.engine.target_T`). ``"auto"``: ``t4`` for official weights, T = S
        for scfm models.
    depth_total
        ``all_genes`` (every input gene, as in the scfm corpus) or ``vocab_genes`` (only the
        vocabulary genes, as the official script) defines each cell's total count.
    precision
        ``auto`` (official: fp32; scfm: bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``.
    gene_matching
        ``standard`` (symbols, Ensembl ids, aliases) or ``exact`` (official: exact names only).
    pool
        Parts to concatenate, in order: ``"S"``, ``"T"`` (depth-token states), ``"max"``,
        ``"mean"`` (over the cell's gene tokens), ``"max_all"`` (over every token). Default the
        first four (4 × encoder width), the official ``pool_type="all"``; ``("max_all",)`` is the
        official ``pool_type="max"``; ``("mean",)`` gives a compact embedding.
    batch_size
        Most cells per forward pass.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``, …
    key_added
        ``obsm`` key of the result; ``uns["scfm"][key_added]`` records model and every setting.
    progress
        Show a progress bar.
    max_tokens
        Cap on padded encoder tokens per batch (fewer cells per batch when cells are long).
        None: the device default (4,096 on CPU, where small batches are fastest; 65,536 on
        GPU); 0: no cap.
    block_rows
        Cells read, mapped and sorted at a time.
    variant
        Entry of an official checkpoint (``cell`` / ``rde`` / ``gene``).
    min_mapped_fraction
        Reject inputs with fewer genes in the vocabulary.

    Returns
    -------
    np.ndarray
        ``(n_cells, len(pool) · E)`` float32, also stored in ``adata.obsm[key_added]``.

    Raises
    ------
    InputValidationError
        Not raw counts, duplicated names, wrong species, missing layer, … (with the fix).

    Examples
    --------
    >>> import scfm                                                          # doctest: +SKIP
    >>> scfm.embed(adata, "models:/scfm-10m/1")                              # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_scfm"); sc.tl.umap(adata)          # doctest: +SKIP
    """
    parts = check_pool(pool)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
    out = np.empty((target.n_obs, len(parts) * run.engine.model.cfg.enc_dim), dtype=np.float32)
    desc = f"embed ({run.info.name})"
    with tqdm(total=target.n_obs, unit="cell", desc=desc, disable=not progress) as bar:
        for block in background(run.blocks(block_rows=block_rows), 1, "scfm-blocks"):
            out[block.start : block.stop] = embed_block(
                run.engine,
                block,
                batch_size=batch_size,
                pool=parts,
                target_depth=run.depth(slice(block.start, block.stop)),
                max_tokens=max_tokens,
                on_batch=bar.update,
            )
    target.obsm[key_added] = out
    record = run.record(pool=list(parts), batch_size=batch_size)
    record["embedding_dim"] = int(out.shape[1])
    store_record(target, key_added, record)
    return out


def embed_block(
    engine: InferenceEngine,
    block: ModelBlock,
    *,
    batch_size: int = 64,
    pool: Sequence[PoolPart] = POOL_PARTS,
    target_depth: TargetDepth = None,
    max_tokens: int | None = None,
    on_batch: Any = None,
) -> np.ndarray:
    """Embed the cells of a model-input block in length-sorted batches.

    ``target_depth`` may be one value per cell of the block. Returns
    ``(n, len(pool) · E)`` float32 in the order of the block's rows.
    """
    out = np.empty((block.n_cells, len(pool) * engine.model.cfg.enc_dim), dtype=np.float32)
    max_tokens = engine.resolve_max_tokens(max_tokens)
    batches = (
        (rows, block.batch(rows), depth_rows(target_depth, rows))
        for rows in length_sorted_batches(block.lengths(), batch_size, max_tokens)
    )  # built in the engine's background thread, ahead of the device
    for rows, emb in engine.embed_stream(batches, pool):
        out[rows] = emb
        if on_batch is not None:
            on_batch(len(rows))
    return out


def embed_csr(
    engine: InferenceEngine,
    X: sp.csr_matrix,
    total_counts: np.ndarray,
    **kwargs: Any,
) -> np.ndarray:
    """:func:`embed_block` for raw counts over the vocabulary (``n × 19264`` CSR) and totals."""
    if X.shape[1] != N_GENES:
        raise ValueError(f"expected a cells × {N_GENES} vocabulary matrix, got {X.shape}")
    return embed_block(engine, counts_block(X, total_counts), **kwargs)


def embed_packed(engine: InferenceEngine, cells: PackedCells, **kwargs: Any) -> np.ndarray:
    """:func:`embed_csr` for packed cells (e.g. a corpus loader batch)."""
    return embed_csr(engine, cells.to_csr(), cells.total_counts, **kwargs)
