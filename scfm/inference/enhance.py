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
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from scfm.corpus.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.inference.batching import DepthTotal, iter_vocab_blocks, length_sorted_batches
from scfm.inference.embed import ModelSpec, _store_record, run_record, validate
from scfm.inference.engine import InferenceEngine
from scfm.inference.loading import load_model_with_info
from scfm.inference.runtime import Precision
from scfm.model.rda import depth_token

log = logging.getLogger(__name__)

Output = Literal["log1p", "counts"]
SCALE = 1e4  # normalization target of the model's values (rda.RDAConfig.scale)


def target_depths(
    total_counts: np.ndarray, target_total: float | np.ndarray | None, fold: float | None
) -> np.ndarray:
    """``(n,)`` float32 T tokens for :func:`enhance` (exactly one of the two must be given)."""
    if (target_total is None) == (fold is None):
        raise ValueError(
            "give exactly one of target_total= (total count to enhance to, e.g. 1e4) or "
            "fold= (multiple of each cell's own total, e.g. 10)"
        )
    S = depth_token(np.asarray(total_counts, dtype=np.float64))
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
    key_added: str = "scfm_enhanced",
    output: Output = "log1p",
    batch_size: int = 16,
    device: str | torch.device = "auto",
    precision: Precision = "auto",
    depth_total: DepthTotal = "all_genes",
    variant: str = "rde",
    progress: bool = True,
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> np.ndarray:
    """Predict every cell's expression at a higher read depth and store it as a layer.

    Parameters
    ----------
    adata
        In-memory AnnData with raw counts in ``X`` (or ``layer``).
    model
        Model or spec (see :func:`scfm.inference.load_model`); official files use ``variant``.
    target_total
        Total count to enhance every cell to (a number or one per cell).
    fold
        Alternatively, a multiple of each cell's own total (``fold=10`` → 10× deeper).
    key_added
        Layer name of the result; ``uns["scfm"][key_added]`` records model and settings.
    output
        ``"log1p"`` (the model's scale: log1p of counts per 10k at the target depth) or
        ``"counts"`` (expected counts at the target depth).
    batch_size
        Cells per forward pass (the decoder spans all 19,266 positions of every cell).

    Returns
    -------
    np.ndarray
        ``(n_cells, n_genes)`` float32, non-negative; input genes outside the vocabulary are 0
        (the model knows nothing of them). Also stored in ``adata.layers[key_added]``.
    """
    if output not in ("log1p", "counts"):
        raise ValueError(f"output must be 'log1p' or 'counts', got {output!r}")
    if getattr(adata, "isbacked", False):
        raise ValueError(
            "enhance writes a dense layer, which a backed AnnData cannot hold: load it into "
            "memory (adata.to_memory()) or enhance a subset (adata[cells].to_memory())"
        )
    if (target_total is None) == (fold is None):
        target_depths(np.ones(1), target_total, fold)  # raises the explanatory error
    checked = validate(adata, layer=layer, min_mapped_fraction=min_mapped_fraction)
    net, info = load_model_with_info(model, device=device, variant=variant)
    engine = InferenceEngine(net, device=device, precision=precision)
    X = adata.X if layer is None else adata.layers[layer]

    index = checked.mapping.index  # vocabulary index per input gene, -1 = unmapped
    mapped = np.flatnonzero(index >= 0)
    vocab_cols, inverse = np.unique(index[mapped], return_inverse=True)
    out = np.zeros((adata.n_obs, adata.n_vars), dtype=np.float32)
    T_all = np.empty(adata.n_obs, dtype=np.float32)
    S_all = np.empty(adata.n_obs, dtype=np.float32)
    with tqdm(total=adata.n_obs, unit="cell", desc="enhance", disable=not progress) as bar:
        for block in iter_vocab_blocks(X, checked.mapping, depth_total=depth_total):
            T = target_depths(block.total_counts, target_total, fold)
            stop = block.start + block.n_cells
            T_all[block.start : stop] = T
            S_all[block.start : stop] = depth_token(block.total_counts)
            for sub in length_sorted_batches(block.lengths(), batch_size):
                pred = engine.predict(block.loader_batch(sub), depth=T[sub], genes=vocab_cols)
                pred = np.maximum(pred, 0.0)  # log1p of a count is never negative
                if output == "counts":
                    pred = np.expm1(pred) * (10.0 ** T[sub, None] / SCALE)
                out[(block.start + sub)[:, None], mapped[None, :]] = pred[:, inverse]
                bar.update(len(sub))
    if (T_all < S_all).any():
        log.warning(
            "%d cells get a target depth below their own total (T < S): that predicts a "
            "shallower profile, not an enhanced one",
            int((T_all < S_all).sum()),
        )
    adata.layers[key_added] = out
    record = run_record(
        info,
        engine,
        checked,
        settings={
            "layer": layer or "X",
            "target_total": "" if target_total is None else _describe(target_total),
            "fold": "" if fold is None else float(fold),
            "output": output,
            "depth_total": depth_total,
            "batch_size": batch_size,
        },
    )
    record["depth"] = {
        "mean_S": float(S_all.mean()),
        "mean_T": float(T_all.mean()),
        "n_unmapped_genes_zero": int(adata.n_vars - mapped.size),
    }
    _store_record(adata, key_added, record)
    return out


def _describe(target_total: float | np.ndarray) -> float | str:
    arr = np.asarray(target_total, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else f"per-cell ({arr.size} values)"
