"""Decoder: a pre-norm transformer over all 19,266 positions with pluggable attention.

Each layer is ``x = x + Attn(LN(x))`` then ``x = x + FF(LN(x))`` (GELU), as in the Performer stack
of the official model. The attention core is chosen by ``cfg.dec_attention``:

``performer``
    FAVOR+ linear attention (paper, official): time and memory linear in the 19,266 positions.
``sdpa``
    Exact softmax attention through ``torch.nn.functional.scaled_dot_product_attention``
    (flash / memory-efficient kernels where available).

Both cores take ``(q, k, v, key_padding_mask)`` shaped ``(B, H, N, d)`` and own no projections,
so the q/k/v/out weights (and an imported checkpoint) are shared by both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scfm.model.config import AttentionKind, ModelConfig
from scfm.model.performer import FastAttention


class ExactAttention(nn.Module):
    """Exact softmax attention core (no parameters); same signature as ``FastAttention``."""

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """``(B, H, N, d)`` q, k, v (and optional ``(B, N)`` padding mask) → ``(B, H, N, d)``."""
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, N), True = attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v/out projections with bias around a swappable core."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, kind: AttentionKind, nb_features: int
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)
        self.attend: FastAttention | ExactAttention
        if kind == "performer":
            self.attend = FastAttention(dim_head, nb_features)
        else:
            self.attend = ExactAttention()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        B, N, _ = x.shape
        # (B, N, H·d) -> (B, H, N, d)
        q, k, v = (
            proj(x).view(B, N, self.heads, -1).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = self.attend(q, k, v, key_padding_mask)  # (B, H, N, d)
        return self.to_out(out.transpose(1, 2).reshape(B, N, -1))  # (B, N, D)


class FeedForward(nn.Module):
    """``w2(GELU(w1 x))``; names match the official ``fn.fn.w1`` / ``fn.fn.w2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.gelu(self.w1(x)))


class DecoderLayer(nn.Module):
    """Pre-norm residual attention block, then pre-norm residual feed-forward block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dec_dim)
        self.attn = SelfAttention(
            cfg.dec_dim, cfg.dec_heads, cfg.dec_dim_head, cfg.dec_attention, cfg.n_features
        )
        self.ff_norm = nn.LayerNorm(cfg.dec_dim)
        self.ff = FeedForward(cfg.dec_dim, cfg.dec_ffn_dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), key_padding_mask)  # (B, N, D)
        return x + self.ff(self.ff_norm(x))  # (B, N, D)


class Decoder(nn.Module):
    """``dec_depth`` decoder layers and a final LayerNorm.

    The model never pads the decoder (every cell spans the same 19,266 positions), so
    ``key_padding_mask`` is normally None; it is honoured when given (the official decoder
    accepts one but silently drops it).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.grad_checkpoint = cfg.grad_checkpoint
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_depth))
        self.norm = nn.LayerNorm(cfg.dec_dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``(B, N, D)`` → ``(B, N, D)``."""
        for layer in self.layers:
            if self.grad_checkpoint and self.training:
                x = checkpoint(layer, x, key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask)
        return self.norm(x)

    def redraw_projections(self, generator: torch.Generator | None = None) -> None:
        """Redraw the FAVOR+ projection of every layer (no-op for exact attention)."""
        for layer in self.layers:
            if isinstance(layer.attn.attend, FastAttention):
                layer.attn.attend.redraw_projection_matrix(generator)

    def compile_attention(self) -> None:
        """``torch.compile`` each FAVOR+ attention core in place (parameter names unchanged).

        Fuses the feature map's element-wise chain over ``(B, H, N, m)``: forward + backward of
        the core 2.2× faster on CPU at the 100m sizes (``benchmarks/decoder_fusion.py``).
        """
        for layer in self.layers:
            if isinstance(layer.attn.attend, FastAttention):
                layer.attn.attend.compile()
