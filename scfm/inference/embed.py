"""Cell embeddings for an AnnData: :func:`embed` writes ``adata.obsm["X_scfm"]``.

adata (counts, any gene ids) ──validate──► gene mapping report
  │ row blocks (never the whole matrix densified; backed h5ad works)
  │ map genes onto the 19,264-gene vocabulary (sparse), pack nonzeros
  │ sort cells by nonzero count, batches of similar length
  ▼
encoder only, inference_mode, bf16 autocast on CUDA  ──► concat[S, T, max, mean] per cell
  │ restore the input order
  ▼
adata.obsm[key_added], adata.uns["scfm"][key_added] (model, settings, mapping)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from scfm import __version__
from scfm.corpus.validate import (
    DEFAULT_MIN_MAPPED_FRACTION,
    InputValidationError,
    ValidatedInput,
    validate_anndata,
)
from scfm.inference.batching import (
    DEFAULT_BLOCK_ROWS,
    DepthTotal,
    csr_to_loader_batch,
    iter_vocab_blocks,
    length_sorted_batches,
)
from scfm.inference.engine import (
    POOL_PARTS,
    InferenceEngine,
    PoolPart,
    TargetDepth,
    check_pool,
)
from scfm.inference.loading import ModelInfo, load_model_with_info, plain_types
from scfm.inference.runtime import Precision
from scfm.model.config import N_GENES
from scfm.model.xtrimogene import XTrimoGene

log = logging.getLogger(__name__)

ModelSpec = XTrimoGene | str | Path


def embed(
    adata,
    model: ModelSpec,
    *,
    layer: str | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    pool: Sequence[PoolPart] = POOL_PARTS,
    key_added: str = "X_scfm",
    progress: bool = True,
    target_depth: TargetDepth = None,
    depth_total: DepthTotal = "all_genes",
    precision: Precision = "auto",
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
        (``anndata.read_h5ad(path, backed="r")``). Gene ids: symbols or Ensembl ids.
    model
        An :class:`~scfm.model.XTrimoGene`, a checkpoint folder/file, an official
        ``models.ckpt`` or an MLflow URI ``models:/name/version`` (see :func:`load_model`).
    layer
        Layer holding the raw counts; default ``X``.
    batch_size
        Most cells per forward pass.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``, …
    pool
        Parts to concatenate, in order: ``"S"``, ``"T"`` (depth-token states), ``"max"``,
        ``"mean"`` (over the cell's gene tokens). Default all four (4 × encoder width), as the
        official ``pool_type="all"``; ``("mean",)`` gives a compact embedding.
    key_added
        ``obsm`` key of the result; ``uns["scfm"][key_added]`` records model and settings.
    progress
        Show a progress bar.
    target_depth
        The T token: None (T = S, the cell's own depth), a log10 depth, or the official forms
        ``"t4"``, ``"f10"``, ``"a1"`` (see :func:`scfm.inference.engine.target_T`). The official
        script's default is ``"t4"``.
    depth_total
        ``all_genes`` (every input gene, as in the scfm corpus) or ``vocab_genes`` (only the
        vocabulary genes, as the official script) defines each cell's total count.
    precision
        ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
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
    checked = validate(adata, layer=layer, min_mapped_fraction=min_mapped_fraction)
    net, info = load_model_with_info(model, device=device, variant=variant)
    engine = InferenceEngine(net, device=device, precision=precision)
    X = adata.X if layer is None else adata.layers[layer]
    out = np.empty((adata.n_obs, len(parts) * net.cfg.enc_dim), dtype=np.float32)
    with tqdm(
        total=adata.n_obs, unit="cell", desc=f"embed ({info.name})", disable=not progress
    ) as bar:
        for block in iter_vocab_blocks(
            X, checked.mapping, block_rows=block_rows, depth_total=depth_total
        ):
            stop = block.start + block.n_cells
            out[block.start : stop] = embed_csr(
                engine,
                block.X,
                block.total_counts,
                batch_size=batch_size,
                pool=parts,
                target_depth=target_depth,
                max_tokens=max_tokens,
                on_batch=bar.update,
            )
    adata.obsm[key_added] = out
    record = run_record(
        info,
        engine,
        checked,
        settings={
            "layer": layer or "X",
            "pool": list(parts),
            "target_depth": "S" if target_depth is None else str(target_depth),
            "depth_total": depth_total,
            "batch_size": batch_size,
        },
    )
    record["embedding_dim"] = int(out.shape[1])
    _store_record(adata, key_added, record)
    return out


def validate(
    adata, *, layer: str | None = None, min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION
) -> ValidatedInput:
    """Check counts and map genes (``validate_anndata`` plus a clear missing-layer error)."""
    if layer is not None and layer not in adata.layers:
        raise InputValidationError(
            f"adata has no layer {layer!r} (layers: {list(adata.layers) or 'none'}); "
            "pass layer=None to use X, or the name of the layer that holds raw counts"
        )
    checked = validate_anndata(adata, layer=layer, min_mapped_fraction=min_mapped_fraction)
    for warning in checked.report.warnings:
        log.warning(warning)
    return checked


def embed_csr(
    engine: InferenceEngine,
    X: sp.csr_matrix,
    total_counts: np.ndarray,
    *,
    batch_size: int = 64,
    pool: Sequence[PoolPart] = POOL_PARTS,
    target_depth: TargetDepth = None,
    max_tokens: int | None = None,
    on_batch: Any = None,
) -> np.ndarray:
    """Embed the cells of a vocabulary CSR (``n × 19264`` counts) in length-sorted batches.

    Returns ``(n, len(pool) · E)`` float32 in the order of the rows of ``X``.
    """
    if X.shape[1] != N_GENES:
        raise ValueError(f"expected a cells × {N_GENES} vocabulary matrix, got {X.shape}")
    X = sp.csr_matrix(X)
    total_counts = np.asarray(total_counts, dtype=np.float64)
    out = np.empty((X.shape[0], len(pool) * engine.model.cfg.enc_dim), dtype=np.float32)
    max_tokens = engine.resolve_max_tokens(max_tokens)
    for rows in length_sorted_batches(np.diff(X.indptr), batch_size, max_tokens):
        batch = csr_to_loader_batch(X[rows], total_counts[rows])
        out[rows] = engine.embed(batch, pool=pool, depth=target_depth)
        if on_batch is not None:
            on_batch(len(rows))
    return out


def embed_loader_batch(
    engine: InferenceEngine, batch: Mapping[str, Any], **kwargs: Any
) -> np.ndarray:
    """:func:`embed_csr` for a packed loader batch (``gene_idx``, ``counts``, ``offsets``, …)."""
    X = loader_batch_to_csr(batch)
    return embed_csr(engine, X, np.asarray(batch["total_counts"], dtype=np.float64), **kwargs)


def loader_batch_to_csr(batch: Mapping[str, Any]) -> sp.csr_matrix:
    """The ``B × 19264`` CSR of a packed loader batch (no copy of the arrays where possible)."""
    offsets = np.asarray(batch["offsets"], dtype=np.int64)
    return sp.csr_matrix(
        (
            np.asarray(batch["counts"], dtype=np.float32),
            np.asarray(batch["gene_idx"], dtype=np.int32),
            offsets,
        ),
        shape=(offsets.size - 1, N_GENES),
    )


def run_record(
    info: ModelInfo, engine: InferenceEngine, checked: ValidatedInput, settings: dict[str, Any]
) -> dict[str, Any]:
    """What ``uns["scfm"][key]`` records: model, settings, input validation and gene mapping."""
    mapping = checked.mapping.report
    return plain_types(
        {
            "scfm_version": __version__,
            "model": {
                "name": info.name,
                "source": info.source,
                "kind": info.kind,
                "version": info.version,
                "variant": info.variant,
                "config": info.config,
            },
            "settings": {
                **settings,
                "device": str(engine.device),
                "precision": engine.precision,
            },
            "input": {
                "n_cells": checked.report.n_cells,
                "n_genes": checked.report.n_genes,
                "n_empty_cells": checked.report.n_empty_cells,
            },
            "gene_mapping": {
                "n_input": mapping.n_input,
                "n_mapped": mapping.n_mapped,
                "fraction_mapped": float(mapping.fraction_mapped),
                "n_vocab_covered": mapping.n_vocab_covered,
                "n_collisions": mapping.n_collisions,
                **{f"by_rule_{k}": v for k, v in mapping.by_rule.items()},
            },
        }
    )


def _store_record(adata, key: str, record: dict[str, Any]) -> None:
    current = adata.uns.get("scfm")
    store = dict(current) if isinstance(current, Mapping) else {}
    store[key] = record
    adata.uns["scfm"] = store
