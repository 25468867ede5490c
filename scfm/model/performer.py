"""Performer FAVOR+ attention (Choromanski et al., 2021) as pure functions.

Softmax attention ``softmax(q kᵀ / √d) v`` is approximated by ``φ(q) (φ(k)ᵀ v)`` with positive
random features ``φ(x) = m^-½ · exp(w·x − |x|²/2)``, ``w`` drawn orthogonal Gaussian. Cost and
memory are linear in the sequence length N: nothing of size N × N is ever built.

Follows performer-pytorch (the code scFoundation vendored). The stabiliser subtracted from the
*key* features before ``exp`` is one maximum per sequence over all its heads, positions and
features. The official kernel takes one maximum over the whole key tensor (every sequence of the
batch); at batch size 1 the two are the same, so official weights give official results, and a
cell's output still does not depend on its batch-mates. The stabiliser would cancel in the
normalisation but for the ``+eps`` term, which sees it: a maximum per head instead (an earlier
scfm choice) moved decoder outputs by tens of percent on heads with small keys.

The feature maps and the linear-attention products run in float32 even under autocast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def orthogonal_matrix_chunk(cols: int, generator: torch.Generator | None = None) -> Tensor:
    """A random ``(cols, cols)`` orthogonal matrix (rows orthonormal), from the QR of a Gaussian."""
    block = torch.randn(cols, cols, generator=generator)
    q, _ = torch.linalg.qr(block, mode="reduced")
    return q.t()


def gaussian_orthogonal_random_matrix(
    nb_rows: int,
    nb_columns: int,
    scaling: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(nb_rows, nb_columns)`` projection: stacked orthogonal blocks with Gaussian-like norms.

    Parameters
    ----------
    nb_rows
        Number of random features m.
    nb_columns
        Head dimension d.
    scaling
        0: each row rescaled to the norm of a Gaussian vector (official, ``ortho_scaling=0``);
        1: every row has norm √d.
    generator
        CPU generator for reproducible draws. The result is on CPU; move it with ``.to``.
    """
    n_full = nb_rows // nb_columns
    blocks = [orthogonal_matrix_chunk(nb_columns, generator) for _ in range(n_full)]
    remaining = nb_rows - n_full * nb_columns
    if remaining > 0:
        blocks.append(orthogonal_matrix_chunk(nb_columns, generator)[:remaining])
    matrix = torch.cat(blocks)  # (m, d)
    if scaling == 0:
        multiplier = torch.randn(nb_rows, nb_columns, generator=generator).norm(dim=1)
    elif scaling == 1:
        multiplier = torch.full((nb_rows,), math.sqrt(nb_columns))
    else:
        raise ValueError(f"scaling must be 0 or 1, got {scaling}")
    return multiplier.unsqueeze(1) * matrix


def softmax_kernel(
    data: Tensor,
    projection_matrix: Tensor,
    is_query: bool,
    key_padding_mask: Tensor | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """Positive random features φ(x) for the softmax kernel.

    Parameters
    ----------
    data
        Queries or keys, ``(B, H, N, d)``.
    projection_matrix
        ``(m, d)`` random directions.
    is_query
        Queries are stabilised by their own row maximum; keys by one maximum per sequence over
        all heads, positions and features (the official global maximum at batch size 1).
    key_padding_mask
        Keys only: ``(B, N)`` bool, True = padding. Padded keys get φ = 0, so they receive no
        attention at all, and are excluded from the stabiliser.
    eps
        Added after ``exp`` (official 1e-4); keeps the normaliser away from zero.

    Returns
    -------
    Tensor
        ``(B, H, N, m)`` features, float32: ``exp`` of a difference of large terms is too lossy in
        bf16, so the feature map is computed in float32 even under autocast.
    """
    with torch.autocast(device_type=data.device.type, enabled=False):
        data = data.float()
        d = data.shape[-1]
        m = projection_matrix.shape[0]
        normalizer = d**-0.25  # splits the 1/√d of softmax attention between q and k
        x = data * normalizer
        dash = x @ projection_matrix.float().t()  # (B, H, N, m)
        diag = 0.5 * (x * x).sum(dim=-1, keepdim=True)  # (B, H, N, 1)
        # the stabiliser is a constant that cancels: no_grad also keeps autograd from saving
        # another (B, H, N, m) tensor for the max
        with torch.no_grad():
            if is_query:
                stab = dash.amax(dim=-1, keepdim=True)  # (B, H, N, 1)
            else:
                keys = dash
                if key_padding_mask is not None:
                    keys = dash.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
                stab = keys.amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        feats = (torch.exp(dash - diag - stab) + eps) * m**-0.5
        if not is_query and key_padding_mask is not None:
            feats = feats.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        return feats


def linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Non-causal linear attention ``φ(q) (φ(k)ᵀ v) / (φ(q) Σₙ φ(k)ₙ)``, in float32.

    ``q``: ``(B, H, N, m)`` and ``k``: ``(B, H, M, m)`` features, ``v``: ``(B, H, M, e)``;
    returns ``(B, H, N, e)`` float32. Autocast is switched off: in bf16 the sums over 19,266
    positions and the normaliser lose about three significant digits.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        k_sum = k.sum(dim=-2)  # (B, H, m)
        context = k.transpose(-2, -1) @ v  # (B, H, m, e)
        denom = q @ k_sum.unsqueeze(-1)  # (B, H, N, 1)
        return (q @ context) / denom  # (B, H, N, e)


class FastAttention(nn.Module):
    """FAVOR+ attention core; owns the random projection but no q/k/v weights.

    Same call signature as :class:`scfm.model.decoder.ExactAttention`, so the two swap freely.
    The projection is a persistent buffer (the official checkpoint stores it): outputs are only
    reproducible with the same matrix. Redrawing is explicit (:meth:`redraw_projection_matrix`),
    typically every ``k`` optimizer steps during pretraining, never at inference.

    Parameters
    ----------
    dim_head
        Head dimension d.
    nb_features
        Random features m (official: floor(d · ln d) = 266 for d = 64).
    ortho_scaling
        See :func:`gaussian_orthogonal_random_matrix`.
    """

    def __init__(self, dim_head: int, nb_features: int, ortho_scaling: int = 0) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.nb_features = nb_features
        self.ortho_scaling = ortho_scaling
        self.register_buffer(
            "projection_matrix",
            gaussian_orthogonal_random_matrix(nb_features, dim_head, ortho_scaling),
        )

    @torch.no_grad()
    def redraw_projection_matrix(self, generator: torch.Generator | None = None) -> None:
        """Draw a fresh projection in place (same device and dtype)."""
        new = gaussian_orthogonal_random_matrix(
            self.nb_features, self.dim_head, self.ortho_scaling, generator
        )
        self.projection_matrix.copy_(new)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """``(B, H, N, d)`` q, k, v (and optional ``(B, N)`` padding mask) → ``(B, H, N, d)``."""
        qf = softmax_kernel(q, self.projection_matrix, is_query=True)  # (B, H, N, m)
        kf = softmax_kernel(
            k, self.projection_matrix, is_query=False, key_padding_mask=key_padding_mask
        )  # (B, H, N, m)
        return linear_attention(qf, kf, v).to(v.dtype)
