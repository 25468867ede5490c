from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from scfm.model.performer import (
    FastAttention,
    gaussian_orthogonal_random_matrix,
    linear_attention,
    softmax_kernel,
)


def _qkv(B: int = 2, H: int = 2, N: int = 48, d: int = 16, scale: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, d, generator=g) * scale for _ in range(3))


def test_projection_blocks_are_orthogonal_with_gaussian_row_norms() -> None:
    g = torch.Generator().manual_seed(0)
    m, d = 266, 64
    P = gaussian_orthogonal_random_matrix(m, d, generator=g)
    assert P.shape == (m, d)
    norms = P.norm(dim=1)
    for start in range(0, m, d):
        block = P[start : start + d] / norms[start : start + d, None]
        gram = block @ block.t()
        assert_close(gram, torch.eye(block.shape[0]), atol=1e-5, rtol=0)
    # rows rescaled to chi(d)-distributed norms: mean ≈ √d
    assert abs(norms.mean().item() - d**0.5) < 0.5
    P1 = gaussian_orthogonal_random_matrix(m, d, scaling=1, generator=g)
    assert_close(P1.norm(dim=1), torch.full((m,), d**0.5))


def test_favor_approximates_softmax_attention() -> None:
    q, k, v = _qkv()
    exact = F.scaled_dot_product_attention(q, k, v)
    attn = FastAttention(dim_head=16, nb_features=4096)
    approx = attn(q, k, v)
    rel = (approx - exact).norm() / exact.norm()
    assert rel < 0.08, rel
    # and far better than ignoring attention altogether (uniform average of v)
    uniform = v.mean(dim=-2, keepdim=True).expand_as(v)
    assert rel < 0.5 * (uniform - exact).norm() / exact.norm()


def test_linear_attention_equals_explicit_normalised_kernel() -> None:
    g = torch.Generator().manual_seed(1)
    qf, kf = torch.rand(2, 3, 10, 7, generator=g), torch.rand(2, 3, 12, 7, generator=g)
    v = torch.randn(2, 3, 12, 5, generator=g)
    A = qf @ kf.transpose(-2, -1)  # (B, H, N, M)
    expected = (A / A.sum(dim=-1, keepdim=True)) @ v
    assert_close(linear_attention(qf, kf, v), expected)


def test_padded_keys_are_ignored() -> None:
    q, k, v = _qkv(B=1, N=40)
    attn = FastAttention(dim_head=16, nb_features=32)
    pad = torch.zeros(1, 40, dtype=torch.bool)
    pad[:, 30:] = True
    k_garbage, v_garbage = k.clone(), v.clone()
    k_garbage[..., 30:, :] = 100.0
    v_garbage[..., 30:, :] = -1e3
    full = attn(q[..., :30, :], k_garbage, v_garbage, key_padding_mask=pad)
    # the padded key/value slots may hold anything: same result as dropping them
    reference = attn(q[..., :30, :], k[..., :30, :], v[..., :30, :])
    assert_close(full, reference)


def test_key_stabiliser_is_per_sequence_so_batch_mates_do_not_matter() -> None:
    q, k, v = _qkv(B=2, d=16, scale=0.5)
    # a batch-mate with huge keys: under one global max, cell 0's key features would underflow
    # to eps and its output would change (the official kernel's behaviour)
    k[1] *= 8.0
    attn = FastAttention(dim_head=16, nb_features=64)
    together = attn(q, k, v)
    alone = attn(q[:1], k[:1], v[:1])
    assert_close(together[:1], alone)

    kf_global = softmax_kernel(k, attn.projection_matrix, is_query=False)
    assert kf_global[0].min() > 1e-4 * 64**-0.5  # cell 0 keeps informative features


def test_redraw_changes_projection_reproducibly() -> None:
    attn = FastAttention(dim_head=8, nb_features=16)
    before = attn.projection_matrix.clone()
    attn.redraw_projection_matrix(torch.Generator().manual_seed(3))
    first = attn.projection_matrix.clone()
    attn.redraw_projection_matrix(torch.Generator().manual_seed(3))
    assert not torch.equal(before, first)
    assert torch.equal(first, attn.projection_matrix)
    assert "projection_matrix" in attn.state_dict()


def _heads_with_different_key_norms(seed: int = 0):
    q, k, v = _qkv(B=1, H=4, N=64, d=16, scale=0.5, seed=seed)
    k[:, 0] *= 6.0  # one head with large keys: the others' features sit far below its maximum
    return q, k, v


def test_key_features_equal_the_official_kernel_at_batch_size_one() -> None:
    from tests.official_reference import official_modules

    official_modules()  # puts the official package on the path
    from pretrainmodels.performer import softmax_kernel as official_kernel

    _, k, _ = _heads_with_different_key_norms()
    P = gaussian_orthogonal_random_matrix(32, 16, generator=torch.Generator().manual_seed(0))
    ours = softmax_kernel(k, P, is_query=False)
    theirs = official_kernel(k, projection_matrix=P, is_query=False)
    assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert_close(
        softmax_kernel(k, P, is_query=True),
        official_kernel(k, projection_matrix=P, is_query=True),
        rtol=1e-5,
        atol=1e-7,
    )


def test_one_stabiliser_per_cell_not_per_head() -> None:
    """A maximum per head would change the small-key heads' outputs (the eps term sees it)."""
    q, k, v = _heads_with_different_key_norms()
    attn = FastAttention(dim_head=16, nb_features=32)
    out = attn(q, k, v)
    m = attn.projection_matrix
    x = k * 16**-0.25
    dash = x @ m.t()
    diag = 0.5 * (x * x).sum(-1, keepdim=True)
    per_head = (torch.exp(dash - diag - dash.amax(dim=(-2, -1), keepdim=True)) + 1e-4) * 32**-0.5
    per_cell = (torch.exp(dash - diag - dash.amax()) + 1e-4) * 32**-0.5
    qf = softmax_kernel(q, m, is_query=True)
    assert_close(out, linear_attention(qf, per_cell, v))
    other = linear_attention(qf, per_head, v)
    rel = ((other - out).norm(dim=(-2, -1)) / out.norm(dim=(-2, -1)))[0]  # per head
    assert rel[0] < 1e-3 < rel[1:].min()  # same on the large-key head, not on the others


def test_feature_maps_and_products_stay_fp32_under_autocast() -> None:
    q, k, v = _qkv(B=1, H=2, N=200, d=16)
    attn = FastAttention(dim_head=16, nb_features=32)
    ref = attn(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.float32
    assert_close(out, ref, rtol=1e-6, atol=1e-6)  # bf16 products would differ by ~1e-2


def test_compiled_attention_cores_give_the_eager_outputs_and_gradients() -> None:
    from scfm.model import ModelConfig
    from scfm.model.decoder import Decoder

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", dropout=0.0)
    eager, fused = Decoder(cfg), Decoder(cfg)
    fused.load_state_dict(eager.state_dict())
    fused.compile_attention()
    assert list(fused.state_dict()) == list(eager.state_dict())  # checkpoints stay compatible
    x = torch.randn(2, 300, cfg.dec_dim)
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yf = eager(xe), fused(xf)
    assert_close(yf, ye, rtol=1e-5, atol=1e-5)
    ye.square().sum().backward()
    yf.square().sum().backward()
    assert_close(xf.grad, xe.grad, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ye, eager(torch.randn_like(x)))  # outputs depend on the input
