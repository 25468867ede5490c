"""Encoder: a post-norm ReLU transformer over the nonzero, unmasked genes of each cell + T + S.

Built from ``torch.nn.TransformerEncoderLayer`` (batch_first, post-norm), exactly the official
layer type, so official weights load by renaming ``encoder.transformer_encoder.{i}`` to
``encoder.layers.{i}``. Cells are packed per batch (see ``scfm.model.packing``); padded keys are
masked out, so a cell's states depend only on its own tokens.
"""

from __future__ import annotations

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
