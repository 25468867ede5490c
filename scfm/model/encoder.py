"""Encoder: a post-norm ReLU transformer over the nonzero, unmasked genes of each cell + T + S.

Built from ``torch.nn.TransformerEncoderLayer`` (batch_first, post-norm), exactly the official
layer type, so official weights load by renaming ``encoder.transformer_encoder.{i}`` to
``encoder.layers.{i}``. Cells are packed per batch (see ``scfm.model.packing``); padded keys are
masked out, so a cell's states depend only on its own tokens.

:meth:`Encoder.forward_jagged` runs the same layers on a nested jagged tensor (no padding at all:
attention by ``scaled_dot_product_attention`` on ragged sequences, FlashAttention / memory-
efficient kernels on CUDA, the math kernel on CPU); inference only, equal to the padded path
within floating-point tolerance (``tests/model/test_encoder_jagged.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scfm.model.config import ModelConfig


class Encoder(nn.Module):
    """Stack of ``enc_depth`` post-norm transformer layers followed by a final LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.grad_checkpoint = cfg.grad_checkpoint
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=cfg.enc_dim,
                nhead=cfg.enc_heads,
                dim_feedforward=cfg.enc_ffn_dim,
                dropout=cfg.dropout,
                activation="relu",
                batch_first=True,
                norm_first=False,
            )
            for _ in range(cfg.enc_depth)
        )
        self.norm = nn.LayerNorm(cfg.enc_dim)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """``(B, L, E)`` embedded tokens, ``(B, L)`` bool padding mask (True = pad) → ``(B, L, E)``.

        Rows of padded positions hold unspecified values; callers must ignore them.
        """
        for layer in self.layers:
            if self.grad_checkpoint and self.training:
                x = checkpoint(layer, x, src_key_padding_mask=padding_mask, use_reentrant=False)
            else:
                x = layer(x, src_key_padding_mask=padding_mask)  # (B, L, E)
        return self.norm(x)

    def forward_jagged(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """:meth:`forward` without computing on padding (inference only).

        Takes and returns the padded ``(B, L, E)`` layout (padding at the end of each row, as
        ``scfm.model.packing.to_padded`` makes it); in between, the cells' tokens run as one
        nested jagged tensor. Padded rows of the output are zero.
        """
        if self.training:
            raise RuntimeError("forward_jagged is for inference: call model.eval() first")
        valid = ~padding_mask
        lengths = valid.sum(dim=1)
        offsets = F.pad(torch.cumsum(lengths, 0), (1, 0))
        h = torch.nested.nested_tensor_from_jagged(x[valid], offsets)  # (B, j, E)
        for layer in self.layers:
            h = _post_norm_layer(layer, h)
        out = x.new_zeros(x.shape)
        out[valid] = self.norm(h.values())
        return out


def _post_norm_layer(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU, eval) on a nested jagged ``(B, j, E)``."""
    attn = layer.self_attn
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split(t: Tensor) -> Tensor:  # (B, j, E) -> (B, H, j, E / H), contiguous as SDPA wants
        return t.contiguous().unflatten(-1, (heads, -1)).transpose(1, 2)

    a = F.scaled_dot_product_attention(split(q), split(k), split(v))
    a = attn.out_proj(a.transpose(1, 2).flatten(-2))
    x = layer.norm1(x + a)
    return layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))
