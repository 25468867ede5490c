"""Read-depth-aware (RDA) pretraining objective: down-sampling, normalization, masking, loss.

For every cell of a batch from the corpus loader:

1. **Duplicate or down-sample**: a cell with at least ``min_total_counts`` counts is, with
   probability ``downsample_prob`` (0.5), thinned binomially at a rate γ ~ Beta(2, 2),
   ``x' ~ Binomial(x, γ)``; otherwise (and for shallower cells) the input is an unchanged
   duplicate, so T = S inputs (the inference default) are trained too. The paper: "a hierarchical
   Bayesian downsampling strategy to generate its low total counts variant or unchanged profiles".
2. **Normalize** both copies, ``log1p(x / total · 1e4)``. The target uses the original total
   (``total_counts``, before vocabulary restriction), the input its own total.
3. **Depth tokens**: T = log10(original total), S = log10(input total). The model learns to
   predict the expression at depth T from an input at depth S.
4. **Mask** ~30 % of the input's nonzero genes and ~3 % of its zero genes; all are scored. Of the
   masked nonzero genes, 10 % (``random_value_prob``) show another expressed gene's value of the
   same cell and 90 % × 80 % (``replace_prob``) are hidden (left out of the encoder; the decoder
   sees the learned mask vector); the rest keep their own value (the official config's
   ``replace_prob=0.8``, ``random_token_prob=0.1``, BERT-style). Masked zero genes are always
   hidden. Cells with more than ``max_encoder_genes`` (15,000, the official
   ``mae_encoder_max_seq_len`` less T and S) visible genes hide a random surplus.
5. **Loss**: MSE between prediction and the *original* normalized expression, masked genes only.

The out-of-vocabulary counts are thinned too, as one binomial draw per cell (a sum of binomials
with a common rate is binomial), so S is the exact total of a down-sampled cell, not a guess.

Batches in: :class:`scfm.data.packed.PackedCells` (raw counts of B cells, CSR; the corpus
loader's output). Batches out: :class:`CellBatch` (torch tensors on CPU; move with ``.to(device)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scfm.data.packed import NormalizedCells, PackedCells, depth_token
from scfm.model.config import N_GENES, S_POS, T_POS, RDAConfig
from scfm.model.packing import append_tokens, to_padded

log = logging.getLogger(__name__)


@dataclass
class CellBatch:
    """Model-ready tensors for B cells.

    Attributes
    ----------
    gene_ids : ``(B, L)`` long encoder positions (genes in order, then T, then S; pad 19266).
    values : ``(B, L)`` float32 normalized input values (T / S slots: log10 totals).
    padding_mask : ``(B, L)`` bool, True = padding.
    T, S : ``(B,)`` float32 depth tokens.
    masked : ``(B, 19264)`` bool genes the decoder must predict (None at inference).
    target : ``(B, 19264)`` float32 original normalized expression (None at inference).
    """

    gene_ids: Tensor
    values: Tensor
    padding_mask: Tensor
    T: Tensor
    S: Tensor
    masked: Tensor | None = None
    target: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.gene_ids.shape[0]

    def encoder_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(gene_ids, values, padding_mask)``, the first arguments of every model method."""
        return self.gene_ids, self.values, self.padding_mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CellBatch:
        """A copy with every tensor on ``device``."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            t = getattr(self, f.name)
            moved[f.name] = None if t is None else t.to(device, non_blocking=non_blocking)
        return replace(self, **moved)

    def pin_memory(self) -> CellBatch:
        """A copy in page-locked host memory (asynchronous copies to a GPU)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: t if t is None else t.pin_memory() for k, t in tensors.items()})


# ------------------------------------------------------------------------------------- inputs
def _read_cells(cells: PackedCells) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat arrays of a batch, totals raised to at least the in-vocabulary sum (``total_counts``
    is before vocabulary restriction, so it cannot be smaller)."""
    if not isinstance(cells, PackedCells):
        raise TypeError(f"expected PackedCells, got {type(cells).__name__}")
    counts = cells.counts.astype(np.float64)
    in_vocab = np.bincount(cells.rows(), weights=counts, minlength=cells.n_cells)
    total = np.maximum(cells.total_counts, in_vocab)
    return cells.gene_idx.astype(np.int64), counts, cells.offsets, total


def _rows(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(offsets.size - 1), np.diff(offsets))


def normalize(
    counts: np.ndarray, rows: np.ndarray, totals: np.ndarray, scale: float = 1e4
) -> np.ndarray:
    """``log1p(counts / totals[row] · scale)`` for flat CSR entries (zero-total cells give 0)."""
    denom = np.maximum(totals, 1e-12)[rows]
    return np.log1p(counts / denom * scale)


# ------------------------------------------------------------------------------- down-sampling
def sample_rates(n: int, cfg: RDAConfig, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` down-sampling rates γ ~ Beta(a, b)."""
    return rng.beta(cfg.beta_a, cfg.beta_b, size=n)


def downsample(
    counts: np.ndarray,
    offsets: np.ndarray,
    total_counts: np.ndarray,
    rates: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Binomially thin every cell's counts at its own rate.

    Parameters
    ----------
    counts
        ``(nnz,)`` raw counts (rounded to integers first).
    offsets
        ``(B + 1,)`` CSR row pointers.
    total_counts
        ``(B,)`` totals before vocabulary restriction; the out-of-vocabulary remainder is thinned
        as one binomial draw so the returned total is that of a truly down-sampled cell.
    rates
        ``(B,)`` keep probabilities in [0, 1].

    Returns
    -------
    down : np.ndarray
        ``(nnz,)`` thinned counts, aligned with ``counts`` (zeros stay in place).
    input_total : np.ndarray
        ``(B,)`` total count of the thinned cell, out-of-vocabulary genes included.
    """
    rows = _rows(offsets)
    n = np.rint(counts).astype(np.int64)
    down = rng.binomial(n, rates[rows]).astype(np.float64)
    in_vocab = np.bincount(rows, weights=n, minlength=rates.size)
    rest = np.maximum(np.rint(total_counts - in_vocab), 0).astype(np.int64)
    input_total = np.bincount(rows, weights=down, minlength=rates.size) + rng.binomial(rest, rates)
    return down, input_total


# --------------------------------------------------------------------------------------- collate
def collate(
    batch: PackedCells,
    cfg: RDAConfig | None = None,
    generator: np.random.Generator | int | None = None,
) -> CellBatch:
    """Turn a loader batch into an RDA pretraining batch (down-sample, normalize, mask, to_padded).

    Parameters
    ----------
    batch
        Raw counts of the cells (:class:`~scfm.data.packed.PackedCells`).
    cfg
        Objective settings; defaults to :class:`RDAConfig()`.
    generator
        numpy Generator or seed; all randomness (rates, thinning, masks) comes from it, so a seeded
        call is reproducible. Use ``functools.partial(collate, cfg=..., generator=rng)`` as a
        DataLoader / Ray Data collate function.

    Returns
    -------
    CellBatch
        With ``masked`` (scored genes) and ``target`` set; the encoder never sees a hidden gene.
    """
    cfg = cfg or RDAConfig()
    rng = np.random.default_rng(generator)
    gene_idx, counts, offsets, total = _read_cells(batch)
    B = total.size
    rows = _rows(offsets)

    # 1. down-sample eligible cells; the rest (and cells thinned to nothing) keep their counts
    down, input_total = counts.copy(), total.copy()
    eligible = (total >= cfg.min_total_counts) & (rng.random(B) < cfg.downsample_prob)
    if eligible.any():
        thinned, thinned_total = downsample(counts, offsets, total, sample_rates(B, cfg, rng), rng)
        in_vocab_left = np.bincount(rows, weights=thinned, minlength=B)
        use = eligible & (in_vocab_left > 0)
        down = np.where(use[rows], thinned, counts)
        input_total = np.where(use, thinned_total, total)

    # 2.-3. normalized target (original depth) and input (its own depth), depth tokens
    target_flat = normalize(counts, rows, total, cfg.scale).astype(np.float32)
    input_flat = normalize(down, rows, input_total, cfg.scale).astype(np.float32)
    T = depth_token(total).astype(np.float32)
    S = depth_token(input_total).astype(np.float32)

    # 4. masks: ~30 % of the input's nonzero genes, ~3 % of its zero genes; all are scored
    nonzero = down > 0
    mask_nz = nonzero & (rng.random(gene_idx.size) < cfg.mask_nonzero_prob)
    u = rng.random(gene_idx.size)
    random_nz = mask_nz & (u < cfg.random_value_prob)
    hidden = (
        mask_nz
        & ~random_nz
        & (u < cfg.random_value_prob + (1 - cfg.random_value_prob) * cfg.replace_prob)
    )
    if random_nz.any():
        input_flat = input_flat.copy()
        input_flat[random_nz] = _random_values_of_same_cell(
            input_flat, nonzero & ~mask_nz, rows, random_nz, rng
        )
    visible = nonzero & ~hidden
    hidden |= visible & ~_cap_per_cell(rows, visible, cfg.max_encoder_genes, rng)
    visible = nonzero & ~hidden
    masked = rng.random((B, N_GENES), dtype=np.float32) < cfg.mask_zero_prob
    masked[rows[nonzero], gene_idx[nonzero]] = False  # the zero-mask applies to zeros only
    scored = mask_nz | hidden
    masked[rows[scored], gene_idx[scored]] = True
    target = np.zeros((B, N_GENES), dtype=np.float32)
    target[rows, gene_idx] = target_flat

    # encoder tokens: the visible nonzero genes of the input, in order, then T and S
    gene_ids, values, padding_mask = _pack_with_depth(
        gene_idx, input_flat, rows, visible, T, S, cfg.pad_to_multiple
    )
    return CellBatch(
        gene_ids=gene_ids,
        values=values,
        padding_mask=padding_mask,
        T=torch.from_numpy(T),
        S=torch.from_numpy(S),
        masked=torch.from_numpy(masked),
        target=torch.from_numpy(target),
    )


def _random_values_of_same_cell(
    values: np.ndarray,
    source: np.ndarray,
    rows: np.ndarray,
    pick: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """For each entry in ``pick``, the value of a random ``source`` entry of the same cell
    (its own value where the cell has no source entry)."""
    pool = np.flatnonzero(source)  # grouped by cell: rows are sorted
    n_cells = int(rows.max()) + 1
    counts = np.bincount(rows[pool], minlength=n_cells)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx = np.flatnonzero(pick)
    r = rows[idx]
    has = counts[r] > 0
    choice = starts[r] + np.floor(rng.random(r.size) * counts[r]).astype(np.int64)
    out = values[idx].copy()
    out[has] = values[pool[choice[has]]]
    return out


def _cap_per_cell(
    rows: np.ndarray, keep: np.ndarray, cap: int, rng: np.random.Generator
) -> np.ndarray:
    """``keep`` thinned to at most ``cap`` entries per cell, chosen at random."""
    if cap <= 0 or not keep.any():
        return keep
    per_cell = np.bincount(rows[keep])
    if per_cell.max() <= cap:
        return keep
    idx = np.flatnonzero(keep)
    order = np.lexsort((rng.random(idx.size), rows[idx]))  # by cell, random within
    ranked = idx[order]
    cell = rows[ranked]
    first = np.searchsorted(cell, cell, side="left")
    rank = np.arange(ranked.size) - first
    out = np.zeros_like(keep)
    out[ranked[rank < cap]] = True
    return out


def prepare_inference(
    cells: PackedCells | NormalizedCells,
    target_T: float | np.ndarray | None = None,
    scale: float = 1e4,
    pad_to_multiple: int = 1,
) -> CellBatch:
    """Deterministic model input for embedding / prediction: no down-sampling, no masking.

    Parameters
    ----------
    cells
        Raw counts (:class:`~scfm.data.packed.PackedCells`: normalized here, S = log10 of the
        total) or model-scale values (:class:`~scfm.data.packed.NormalizedCells`, with S).
    target_T
        log10 target depth (scalar or ``(B,)``). None gives T = S (the official ``f1``);
        e.g. ``S + 1`` asks :meth:`XTrimoGene.predict_expression` for 10× the read depth.
    """
    if isinstance(cells, NormalizedCells):
        gene_idx, values, rows, S = (
            cells.gene_idx.astype(np.int64),
            cells.values,
            cells.rows(),
            cells.S,
        )
    else:
        gene_idx, counts, offsets, total = _read_cells(cells)
        rows = _rows(offsets)
        S = depth_token(total).astype(np.float32)
        values = normalize(counts, rows, total, scale).astype(np.float32)
    T = (
        S.copy()
        if target_T is None
        else np.broadcast_to(np.asarray(target_T, dtype=np.float32), S.shape).copy()
    )
    gene_ids, vals, padding_mask = _pack_with_depth(
        gene_idx, values, rows, values > 0, T, S, pad_to_multiple
    )
    return CellBatch(gene_ids, vals, padding_mask, T=torch.from_numpy(T), S=torch.from_numpy(S))


def _pack_with_depth(
    gene_idx: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    keep: np.ndarray,
    T: np.ndarray,
    S: np.ndarray,
    pad_to_multiple: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder tokens: the kept entries of each cell, in order, then T and S; packed."""
    offsets = np.zeros(T.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(rows[keep], minlength=T.size))
    ids, vals, offs = append_tokens(
        torch.from_numpy(gene_idx[keep]),
        torch.from_numpy(values[keep]),
        torch.from_numpy(offsets),
        extra_ids=torch.tensor([T_POS, S_POS]),
        extra_values=torch.from_numpy(np.stack([T, S], axis=1)),
    )
    return to_padded(ids, vals, offs, pad_to_multiple=pad_to_multiple)


# ------------------------------------------------------------------------------------------ loss
def masked_mse(pred: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """Mean squared error over the masked genes of the batch (``(B, 19264)`` each).

    Computed in float32 (predictions may be bf16 under autocast); 0 if nothing is masked.
    """
    err = (pred.float() - target.float()).square()
    return (err * masked).sum() / masked.sum().clamp(min=1)
