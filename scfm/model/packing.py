"""Ragged packed cells to padded batches, and back, exactly.

Cells arrive CSR-style (the corpus loader's contract): a flat ``gene_idx`` / ``values`` pair and
``offsets`` of length B+1 with ``cell i = [offsets[i], offsets[i+1])``. The encoder wants a
rectangular ``(B, L)`` batch, L = the longest cell, left-aligned (order within a cell preserved)
with a key-padding mask; the decoder wants encoder states back at their gene positions.

    to_padded    (nnz,) + offsets           -> (B, L) ids, values, padding_mask
    from_padded  (B, L) ids, values, mask   -> (nnz,) + offsets       (exact inverse of to_padded)
    scatter_to_positions  (B, L, E)      -> (B, N, E) rows placed at their gene positions
    gather_from_positions (B, N, E)      -> (B, L, E)                 (inverse on valid tokens)

Everything is index arithmetic on tensors: it runs on whichever device the inputs live on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scfm.model.config import PAD_POS


def _as_long(x: Tensor) -> Tensor:
    return x if x.dtype == torch.long else x.long()


def to_padded(
    gene_idx: Tensor,
    values: Tensor,
    offsets: Tensor,
    pad_id: int = PAD_POS,
    pad_value: float = 0.0,
    pad_to_multiple: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pack CSR rows into a left-aligned padded batch.

    Parameters
    ----------
    gene_idx
        ``(nnz,)`` integer positions, cells concatenated.
    values
        ``(nnz,)`` values aligned with ``gene_idx``.
    offsets
        ``(B + 1,)`` row pointers, ``offsets[0] == 0``, ``offsets[-1] == nnz``.
    pad_id, pad_value
        Fill for padded slots (position id 19266 = the padding row of ``pos_emb``).
    pad_to_multiple
        Round L up to a multiple of this (fewer distinct shapes for ``torch.compile`` / kernels).

    Returns
    -------
    ids : Tensor
        ``(B, L)`` long.
    vals : Tensor
        ``(B, L)`` with the dtype of ``values``.
    padding_mask : Tensor
        ``(B, L)`` bool, True = padding.
    """
    offsets = _as_long(offsets)
    device = gene_idx.device
    lengths = offsets[1:] - offsets[:-1]  # (B,)
    B = lengths.numel()
    L = int(lengths.max()) if B > 0 else 0
    L = -(-L // pad_to_multiple) * pad_to_multiple
    # output_size: no device sync, and 10× faster on CPU for the small batches of a loader
    row = torch.repeat_interleave(
        torch.arange(B, device=device), lengths, output_size=gene_idx.numel()
    )  # (nnz,)
    col = torch.arange(row.numel(), device=device) - offsets[:-1][row]  # (nnz,)
    ids = torch.full((B, L), pad_id, dtype=torch.long, device=device)
    ids[row, col] = _as_long(gene_idx)
    vals = torch.full((B, L), pad_value, dtype=values.dtype, device=device)
    vals[row, col] = values
    padding_mask = torch.ones((B, L), dtype=torch.bool, device=device)
    padding_mask[row, col] = False
    return ids, vals, padding_mask


def from_padded(ids: Tensor, vals: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`to_padded`: ``(B, L)`` → flat ``(nnz,)`` ids and values, offsets."""
    valid = ~padding_mask  # (B, L)
    lengths = valid.sum(dim=1)  # (B,)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=ids.device)
    offsets[1:] = torch.cumsum(lengths, dim=0)
    # boolean indexing walks row-major, so within-cell order is kept
    return ids[valid], vals[valid], offsets


def append_tokens(
    gene_idx: Tensor, values: Tensor, offsets: Tensor, extra_ids: Tensor, extra_values: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Append K tokens to the end of every CSR row (used for the T and S depth tokens).

    ``extra_ids`` is ``(K,)`` (same for every cell), ``extra_values`` is ``(B, K)``.
    Returns new flat ``gene_idx``, ``values`` and ``offsets``.
    """
    offsets = _as_long(offsets)
    device = gene_idx.device
    B, K = extra_values.shape
    lengths = offsets[1:] - offsets[:-1]
    row = torch.repeat_interleave(
        torch.arange(B, device=device), lengths, output_size=gene_idx.numel()
    )
    new_offsets = offsets + K * torch.arange(B + 1, device=device)
    n = gene_idx.numel() + B * K
    out_ids = torch.empty(n, dtype=torch.long, device=device)
    out_vals = torch.empty(n, dtype=values.dtype, device=device)
    old_slot = torch.arange(gene_idx.numel(), device=device) + K * row  # shift by K per earlier row
    out_ids[old_slot] = _as_long(gene_idx)
    out_vals[old_slot] = values
    new_slot = new_offsets[1:, None] - K + torch.arange(K, device=device)  # (B, K)
    out_ids[new_slot] = _as_long(extra_ids).to(device).expand(B, K)
    out_vals[new_slot] = extra_values.to(values.dtype)
    return out_ids, out_vals, new_offsets


def scatter_to_positions(h: Tensor, gene_ids: Tensor, padding_mask: Tensor, base: Tensor) -> Tensor:
    """Place packed rows at their positions in a full-length tensor (out of place).

    Parameters
    ----------
    h
        ``(B, L, E)`` packed states.
    gene_ids, padding_mask
        ``(B, L)`` positions in ``[0, N)`` and padding flags.
    base
        ``(B, N, E)`` values for positions no token lands on.

    Returns
    -------
    Tensor
        ``(B, N, E)``: ``base`` with ``out[b, gene_ids[b, l]] = h[b, l]`` for every valid token.
    """
    B, N, E = base.shape
    # padding goes to a scratch row N that is cut off again: static shapes, no boolean indexing
    idx = gene_ids.masked_fill(padding_mask, N).unsqueeze(-1).expand(-1, -1, E)  # (B, L, E)
    out = torch.cat([base, base.new_zeros(B, 1, E)], dim=1)  # (B, N + 1, E)
    out = out.scatter(1, idx, h.to(out.dtype))
    return out[:, :N]


def gather_from_positions(x: Tensor, gene_ids: Tensor, padding_mask: Tensor) -> Tensor:
    """``(B, N, E)`` full-length → ``(B, L, E)`` packed; padded slots are zero."""
    E = x.shape[-1]
    idx = gene_ids.masked_fill(padding_mask, 0).unsqueeze(-1).expand(-1, -1, E)  # (B, L, E)
    return x.gather(1, idx).masked_fill(padding_mask.unsqueeze(-1), 0.0)
