from __future__ import annotations

import numpy as np
import torch

from scfm.model.config import PAD_POS
from scfm.model.packing import (
    append_tokens,
    from_padded,
    gather_from_positions,
    scatter_to_positions,
    to_padded,
)


def _csr(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ids = [np.sort(rng.choice(1000, n, replace=False)) for n in lengths]
    vals = [rng.random(n).astype(np.float32) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cat = np.concatenate(ids) if sum(lengths) else np.zeros(0, dtype=np.int64)
    return (
        torch.from_numpy(cat.astype(np.int32)),
        torch.from_numpy(np.concatenate(vals)),
        torch.from_numpy(offsets.astype(np.int64)),
    )


def test_pack_layout_and_exact_inverse() -> None:
    gene_idx, values, offsets = _csr([3, 0, 5, 1])
    ids, vals, pad = to_padded(gene_idx, values, offsets)
    assert ids.shape == vals.shape == pad.shape == (4, 5)
    assert ids.dtype == torch.long and pad.dtype == torch.bool
    assert pad.sum(1).tolist() == [2, 5, 0, 4]
    assert (ids[pad] == PAD_POS).all() and (vals[pad] == 0).all()
    assert torch.equal(ids[2], gene_idx[3:8].long())  # left-aligned, order kept
    g2, v2, o2 = from_padded(ids, vals, pad)
    assert torch.equal(g2, gene_idx.long())
    assert torch.equal(v2, values)
    assert torch.equal(o2, offsets)


def test_pack_to_multiple_only_adds_padding() -> None:
    gene_idx, values, offsets = _csr([3, 6])
    ids, vals, pad = to_padded(gene_idx, values, offsets, pad_to_multiple=8)
    assert ids.shape == (2, 8)
    g2, v2, o2 = from_padded(ids, vals, pad)
    assert torch.equal(g2, gene_idx.long()) and torch.equal(v2, values) and torch.equal(o2, offsets)


def test_append_tokens_puts_extras_at_each_row_end() -> None:
    gene_idx, values, offsets = _csr([2, 0, 3])
    extra_vals = torch.tensor([[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]])
    ids, vals, offs = append_tokens(gene_idx, values, offsets, torch.tensor([7, 8]), extra_vals)
    assert offs.tolist() == [0, 4, 6, 11]
    assert ids[:4].tolist() == [*gene_idx[:2].tolist(), 7, 8]
    assert ids[4:6].tolist() == [7, 8]
    assert vals[4:6].tolist() == [20.0, 21.0]
    assert torch.equal(vals[6:9], values[2:5]) and vals[9:].tolist() == [30.0, 31.0]


def test_scatter_gather_round_trip() -> None:
    gene_idx, values, offsets = _csr([4, 1, 3], seed=2)
    ids, vals, pad = to_padded(gene_idx, values, offsets)
    B, L = ids.shape
    h = torch.randn(B, L, 6)
    base = torch.randn(B, 1000, 6)
    full = scatter_to_positions(h, ids, pad, base)
    assert full.shape == (B, 1000, 6)
    # every valid token landed at its position, everything else is untouched base
    touched = torch.zeros(B, 1000, dtype=torch.bool)
    for b in range(B):
        for slot in range(L):
            if not pad[b, slot]:
                torch.testing.assert_close(full[b, ids[b, slot]], h[b, slot])
                touched[b, ids[b, slot]] = True
    torch.testing.assert_close(full[~touched], base[~touched])
    back = gather_from_positions(full, ids, pad)
    torch.testing.assert_close(back[~pad], h[~pad])
    assert (back[pad] == 0).all()


def test_scatter_gradients_reach_only_valid_tokens() -> None:
    gene_idx, values, offsets = _csr([2, 4], seed=3)
    ids, _, pad = to_padded(gene_idx, values, offsets)
    h = torch.randn(*ids.shape, 3, requires_grad=True)
    scatter_to_positions(h, ids, pad, torch.zeros(2, 1000, 3)).sum().backward()
    assert (h.grad[~pad] == 1).all() and (h.grad[pad] == 0).all()
