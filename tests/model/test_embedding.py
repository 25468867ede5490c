from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from scfm.model.embedding import AutoDiscretization, gene_embedding


def test_auto_discretization_matches_formula() -> None:
    torch.manual_seed(0)
    emb = AutoDiscretization(dim=12, n_bins=7, alpha=0.5)
    v = torch.tensor([[0.0, 1.5, 3.0], [4.2, 0.1, 9.0]])
    out = emb(v)
    assert out.shape == (2, 3, 12)
    h = F.leaky_relu(v[..., None] * emb.mlp.weight[:, 0] + emb.mlp.bias, 0.1)  # (2, 3, 7)
    w = torch.softmax(0.5 * h + h @ emb.mlp2.weight.t() + emb.mlp2.bias, dim=-1)
    assert_close(out, w @ emb.emb.weight)
    assert_close(w.sum(-1), torch.ones(2, 3))  # a convex combination of the bin vectors


def test_mask_and_pad_vectors_replace_values() -> None:
    torch.manual_seed(0)
    emb = AutoDiscretization(dim=8, n_bins=5)
    v = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[False, True, False]])
    pad = torch.tensor([[False, False, True]])
    out = emb(v, mask=mask, pad=pad)
    assert_close(out[0, 1], emb.emb_mask.weight[0])
    assert_close(out[0, 2], emb.emb_pad.weight[0])
    assert_close(out[0, 0], emb(v)[0, 0])
    # the masked vector does not depend on the (hidden) value
    assert_close(emb(torch.tensor([[7.0]]), mask=torch.tensor([[True]]))[0, 0], out[0, 1])


def test_gene_embedding_has_gene_t_s_and_pad_rows() -> None:
    assert gene_embedding(4).weight.shape == (19267, 4)


def test_value_embedding_input_stays_fp32_under_autocast() -> None:
    """S = 3.70 and 3.71 are one value in bf16; the embedding must still tell them apart."""
    torch.manual_seed(0)
    emb = AutoDiscretization(dim=8, n_bins=100)
    values = torch.tensor([3.70, 3.71])
    assert torch.tensor(3.70).bfloat16() == torch.tensor(3.71).bfloat16()
    ref = emb(values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emb(values)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    assert (out[0] - out[1]).abs().max() > 1e-3
