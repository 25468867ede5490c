"""Input embeddings: auto-discretized expression values plus learned gene (position) vectors.

A continuous expression value is not rounded into a bin: a tiny MLP turns it into soft weights
over ``n_bins`` learned bin vectors and the embedding is their weighted sum (scFoundation's
"auto-discretization"). Masked and padded entries get their own learned vectors instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.model.config import N_POS

LEAKY_SLOPE = 0.1  # official value


class AutoDiscretization(nn.Module):
    """Scalar value → ``dim`` vector by soft assignment to ``n_bins`` learned bins.

    ``h = LeakyReLU(mlp(v))``, ``logits = alpha·h + mlp2(h)``, ``w = softmax(logits)``,
    ``embedding = w @ emb.weight``. Parameter names match the official ``token_emb`` module.

    Parameters
    ----------
    dim
        Output width (the encoder width).
    n_bins
        Number of learned bin vectors (100 in the paper).
    alpha
        Weight of the residual path in the bin logits.
    """

    def __init__(self, dim: int, n_bins: int = 100, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.mlp = nn.Linear(1, n_bins)
        self.mlp2 = nn.Linear(n_bins, n_bins)
        self.emb = nn.Embedding(n_bins, dim)
        self.emb_mask = nn.Embedding(1, dim)
        self.emb_pad = nn.Embedding(1, dim)

    def forward(
        self, values: Tensor, mask: Tensor | None = None, pad: Tensor | None = None
    ) -> Tensor:
        """Embed values of any shape ``(...)`` into ``(..., dim)``.

        Parameters
        ----------
        values
            Float expression values (normalized log1p; T/S tokens carry log10 totals).
        mask, pad
            Optional bool tensors shaped like ``values``; True entries are replaced by the
            learned mask / padding vector. (The official code detects them by the magic
            values 102 / 103 instead; explicit masks cannot collide with a real value.)
        """
        # float32 even under autocast: in bf16 the scalar input keeps 3 significant digits, so
        # depth tokens 3.70 and 3.71 (or nearby expression values) would embed identically
        with torch.autocast(device_type=values.device.type, enabled=False):
            v = values.float().unsqueeze(-1)
            h = F.leaky_relu(_linear32(self.mlp, v), LEAKY_SLOPE)  # (..., n_bins)
            logits = self.alpha * h + _linear32(self.mlp2, h)
            weights = torch.softmax(logits, dim=-1)  # (..., n_bins)
            x = weights @ self.emb.weight.float()  # (..., dim)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.emb_mask.weight[0].to(x.dtype), x)
        if pad is not None:
            x = torch.where(pad.unsqueeze(-1), self.emb_pad.weight[0].to(x.dtype), x)
        return x


def _linear32(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` in float32 whatever the parameters' dtype."""
    return F.linear(x, layer.weight.float(), layer.bias.float())


def gene_embedding(dim: int) -> nn.Embedding:
    """Learned gene (position) embedding: rows 0..19263 genes, 19264 T, 19265 S, 19266 padding."""
    return nn.Embedding(N_POS + 1, dim)
