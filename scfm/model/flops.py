"""Analytic FLOP counts of xTrimoGene, for throughput (MFU) and scaling-law plots.

Counts are matrix-multiply FLOPs (2 per multiply-add), the convention of MFU and of the scaling
literature; element-wise work (norms, softmax, ``exp`` of the random features) is left out. A
training step costs about 3× the forward pass (backward ≈ 2× forward).

The encoder sees ``L`` tokens per cell (nonzero unmasked genes + T + S), so its cost depends on
the data; the decoder always spans all 19,266 positions. ``tests/model/test_flops.py`` checks the
formulas against ``torch.utils.flop_counter.FlopCounterMode`` on real forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from scfm.model.config import N_POS, ModelConfig

TRAIN_FLOPS_PER_FORWARD = 3.0

# Dense bf16 peak of accelerators scfm is run on (FLOP/s), for model FLOPs utilization.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}


@dataclass(frozen=True)
class ForwardFlops:
    """Forward-pass FLOPs of one cell, by part."""

    embedding: float  # auto-discretization of the encoder tokens
    encoder: float
    decoder: float  # decoder_embed, decoder layers and the regression head

    @property
    def total(self) -> float:
        return self.embedding + self.encoder + self.decoder


def forward_flops(cfg: ModelConfig, enc_tokens: float, dec_positions: int = N_POS) -> ForwardFlops:
    """FLOPs of one cell's forward pass with ``enc_tokens`` encoder tokens.

    Parameters
    ----------
    cfg
        Model sizes.
    enc_tokens
        Encoder tokens of the cell (for a batch: the mean over its cells).
    dec_positions
        Decoder positions (19,266; only cell-embedding inference skips the decoder).
    """
    L, E, F, b = float(enc_tokens), cfg.enc_dim, cfg.enc_ffn_dim, cfg.n_bins
    embedding = 2 * L * (b + b * b + b * E)  # Linear(1→b), Linear(b→b), weights @ bins
    enc_layer = 8 * L * E * E + 4 * L * L * E + 4 * L * E * F  # q,k,v,out + scores·V + FFN
    encoder = cfg.enc_depth * enc_layer

    N, D, H, d, Fd = (
        float(dec_positions),
        cfg.dec_dim,
        cfg.dec_heads,
        cfg.dec_dim_head,
        cfg.dec_ffn_dim,
    )
    inner = H * d
    if cfg.dec_attention == "performer":
        m = cfg.n_features
        # φ(q), φ(k): N·d·m each; φ(k)ᵀv and φ(q)·context: N·m·d each; normaliser: N·m
        attention = H * (8 * N * d * m + 2 * N * m)
    else:
        attention = 4 * N * N * inner
    dec_layer = 6 * N * D * inner + 2 * N * inner * D + attention + 4 * N * D * Fd
    decoder = 2 * N * E * D + cfg.dec_depth * dec_layer + 2 * N * D
    return ForwardFlops(embedding=embedding, encoder=encoder, decoder=decoder)


def train_flops_per_cell(cfg: ModelConfig, enc_tokens: float) -> float:
    """FLOPs of one cell in a training step (forward + backward)."""
    return TRAIN_FLOPS_PER_FORWARD * forward_flops(cfg, enc_tokens).total


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a known accelerator (matched in its name), else None."""
    for key, value in PEAK_BF16_FLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None
