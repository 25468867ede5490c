"""Read-depth enhancement: predict each cell's expression as if it had been sequenced deeper.

xTrimoGene is pretrained to predict a cell's expression at depth T from an input at depth S
(read-depth-aware objective). Setting T above the cell's own S asks for the profile at a higher
total count, which the scFoundation paper uses to enhance shallow cells (its ``rde`` checkpoint).

    T = log10(target_total)           (target_total=...)
    T = S + log10(fold)               (fold=...)

The prediction is the normalized expression ``log1p(x / total · 1e4)`` at depth T for every
vocabulary gene; :func:`enhance` maps it back onto the input genes as a new layer, either in that
log1p scale or as expected counts at the target depth (``expm1(pred) · 10^T / 1e4``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from scfm.data.prepared import DEFAULT_BLOCK_ROWS, SCALE, PreparedInput
from scfm.data.validate import DEFAULT_MIN_MAPPED_FRACTION, iter_row_blocks
from scfm.inference.batching import length_sorted_batches
from scfm.inference.pipeline import ModelSpec, start_run, store_record
from scfm.inference.settings import AUTO

log = logging.getLogger(__name__)

Output = Literal["log1p", "counts"]


def target_depths(
    S: np.ndarray, target_total: float | np.ndarray | None, fold: float | None
) -> np.ndarray:
    """``(n,)`` float32 T tokens for cells with depth tokens ``S`` (exactly one of
    ``target_total`` (one value or one per cell) and ``fold`` must be given)."""
    if (target_total is None) == (fold is None):
        raise ValueError(
            "give exactly one of target_total= (total count to enhance to, e.g. 1e4) or "
            "fold= (multiple of each cell's own total, e.g. 10)"
        )
    S = np.asarray(S, dtype=np.float64)
    if fold is not None:
        if not np.isfinite(fold) or fold <= 0:
            raise ValueError(f"fold must be a positive number, got {fold}")
        return (S + np.log10(fold)).astype(np.float32)
    target = np.broadcast_to(np.asarray(target_total, dtype=np.float64), S.shape)
    if not np.isfinite(target).all() or (target <= 0).any():
        raise ValueError("target_total must be positive and finite (one value or one per cell)")
    return np.log10(target).astype(np.float32)


def enhance(
    adata,
    model: ModelSpec,
    *,
    target_total: float | np.ndarray | None = None,
    fold: float | None = None,
    layer: str | None = None,
    pre_normalized: Any = None,
    total_counts_key: str = "total_counts",
    settings: str = "auto",
    depth_total: str = AUTO,
    precision: str = AUTO,
    gene_matching: str = AUTO,
    mask_zero_genes: bool = False,
    key_added: str = "scfm_enhanced",
    output: Output = "log1p",
    batch_size: int = 16,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    device: str | torch.device = "auto",
    variant: str = "rde",
    progress: bool = True,
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> np.ndarray:
    """Predict every cell's expression at a higher read depth and store it as a layer.

    Parameters
    ----------
    adata
        In-memory AnnData with raw counts in ``X`` (or ``layer``), or a
        :class:`~scfm.data.prepared.PreparedInput` of one.
    model
        Model or spec (see :func:`scfm.inference.load_model`); official files use ``variant``.
    target_total
        Total count to enhance every cell to (a number or one per cell).
    fold
        Alternatively, a multiple of each cell's own total (``fold=10`` → 10× deeper).
    pre_normalized, total_counts_key, settings, depth_total, precision, gene_matching
        As in :func:`scfm.embed`.
    mask_zero_genes
        Give the genes a cell does not express the learned mask vector in the decoder, so their
        predictions come from positions of the kind pretraining scored (masked ones), instead of
        the embedding of the value 0 (unmasked zeros are never scored in pretraining). The
        official code does not mask (its ``gene_expression`` output).
    key_added
        Layer name of the result; ``uns["scfm"][key_added]`` records model and settings.
    output
        ``"log1p"`` (the model's scale: log1p of counts per 10k at the target depth) or
        ``"counts"`` (expected counts at the target depth).
    batch_size
        Cells per forward pass (the decoder spans all 19,266 positions of every cell).
    block_rows
        Cells read, mapped and predicted at a time.

    Returns
    -------
    np.ndarray
        ``(n_cells, n_genes)`` float32, non-negative; input genes outside the vocabulary are 0
        (the model knows nothing of them). Input genes that share one vocabulary gene
        (collisions, summed on input) split its prediction in proportion to their counts in the
        cell (equally where none was observed), so nothing is counted twice. Also stored in
        ``adata.layers[key_added]``.
    """
    if output not in ("log1p", "counts"):
        raise ValueError(f"output must be 'log1p' or 'counts', got {output!r}")
    target = adata.adata if isinstance(adata, PreparedInput) else adata
    if getattr(target, "isbacked", False):
        raise ValueError(
            "enhance writes a dense layer, which a backed AnnData cannot hold: load it into "
            "memory (adata.to_memory()) or enhance a subset (adata[cells].to_memory())"
        )
    if (target_total is None) == (fold is None):
        target_depths(np.zeros(1), target_total, fold)  # raises the explanatory error
    if layer == "raw" and target.raw is not None and target.raw.n_vars != target.n_vars:
        raise ValueError(
            "enhance writes a layer over adata.var_names, and adata.raw holds other genes: "
            "enhance adata.raw.to_adata() instead"
        )
    if target_total is not None and np.ndim(target_total) > 0:
        if np.shape(target_total) != (target.n_obs,):
            raise ValueError(
                f"target_total has shape {np.shape(target_total)}: give one number or one per "
                f"cell ({target.n_obs})"
            )
    run = start_run(
        adata,
        model,
        variant=variant,
        layer=layer,
        pre_normalized=pre_normalized,
        total_counts_key=total_counts_key,
        settings=settings,
        target_depth=None,  # T comes from target_total / fold
        depth_total=depth_total,
        precision=precision,
        gene_matching=gene_matching,
        device=device,
        min_mapped_fraction=min_mapped_fraction,
    )
    split = CollisionSplit(run.prepared.mapping.index)
    out = np.zeros((target.n_obs, target.n_vars), dtype=np.float32)
    T_all = np.empty(target.n_obs, dtype=np.float32)
    S_all = np.empty(target.n_obs, dtype=np.float32)
    raw_blocks = iter_row_blocks(run.prepared.X, block_rows)
    with tqdm(total=target.n_obs, unit="cell", desc="enhance", disable=not progress) as bar:
        for block, (_, raw) in zip(run.blocks(block_rows=block_rows), raw_blocks, strict=True):
            per_block_total = (
                target_total[block.start : block.stop]
                if target_total is not None and np.ndim(target_total) > 0
                else target_total
            )
            T = target_depths(block.S, per_block_total, fold)
            T_all[block.start : block.stop] = T
            S_all[block.start : block.stop] = block.S
            shares = split.shares(raw)
            for sub in length_sorted_batches(block.lengths(), batch_size):
                pred = run.engine.predict(
                    block.batch(sub),
                    depth=T[sub],
                    genes=split.vocab_cols,
                    mask_zeros=mask_zero_genes,
                )
                # expected counts at depth T (log1p of a count is never negative)
                counts = np.expm1(np.maximum(pred, 0.0)) * (10.0 ** T[sub, None] / SCALE)
                counts = counts[:, split.inverse] * shares[sub]  # (cells, mapped input genes)
                if output == "log1p":
                    counts = np.log1p(counts * (SCALE / 10.0 ** T[sub, None]))
                out[(block.start + sub)[:, None], split.mapped[None, :]] = counts
                bar.update(len(sub))
    if (T_all < S_all).any():
        log.warning(
            "%d cells get a target depth below their own total (T < S): that predicts a "
            "shallower profile, not an enhanced one",
            int((T_all < S_all).sum()),
        )
    target.layers[key_added] = out
    record = run.record(
        target_total="" if target_total is None else _describe(target_total),
        fold="" if fold is None else float(fold),
        output=output,
        mask_zero_genes=mask_zero_genes,
        batch_size=batch_size,
    )
    record["depth"] = {
        "mean_S": float(S_all.mean()),
        "mean_T": float(T_all.mean()),
        "n_unmapped_genes_zero": int(target.n_vars - split.mapped.size),
        "n_collided_input_genes": split.n_collided,
    }
    store_record(target, key_added, record)
    return out


class CollisionSplit:
    """How a vocabulary gene's prediction is shared among the input genes mapped onto it.

    Parameters
    ----------
    index
        Vocabulary index per input gene (-1 = unmapped).
    """

    def __init__(self, index: np.ndarray) -> None:
        self.mapped = np.flatnonzero(index >= 0)  # input columns that get a prediction
        self.vocab_cols, self.inverse = np.unique(index[self.mapped], return_inverse=True)
        group_size = np.bincount(self.inverse)
        self.collided = group_size[self.inverse] > 1  # per mapped input gene
        self.n_collided = int(self.collided.sum())

    def shares(self, raw) -> np.ndarray:
        """``(n, len(mapped))`` fraction of each vocabulary gene's prediction per input gene:
        1 for genes alone on their vocabulary gene; for colliding genes, their share of the
        group's counts in the cell (equal shares where the group saw nothing)."""
        n = raw.shape[0]
        shares = np.ones((n, self.mapped.size), dtype=np.float64)
        if not self.n_collided:
            return shares
        cols = np.flatnonzero(self.collided)
        x = raw[:, self.mapped[cols]]
        x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
        groups = self.inverse[cols]
        group_ids, local = np.unique(groups, return_inverse=True)
        sums = np.zeros((n, group_ids.size))
        np.add.at(sums.T, local, x.T)
        size = np.bincount(local).astype(np.float64)
        denom = sums[:, local]
        shares[:, cols] = np.where(
            denom > 0, x / np.where(denom > 0, denom, 1.0), 1.0 / size[local]
        )
        return shares


def _describe(target_total: float | np.ndarray) -> float | str:
    arr = np.asarray(target_total, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else f"per-cell ({arr.size} values)"
