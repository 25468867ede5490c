"""Model sizes for xTrimoGene (scFoundation): one dataclass and a registry of named presets.

The gene vocabulary is fixed (19,264 genes, see ``scfm.data.genes``), so every preset shares the
same sequence layout::

    position  0 .. 19263   genes, in vocabulary order
    position  19264        T token: log10 of the target (original) total count
    position  19265        S token: log10 of the source (input) total count
    position  19266        padding position (encoder padding only; one extra row of ``pos_emb``)

The ``100m`` preset reproduces the released scFoundation "0.1B" model exactly (119,252,285
trainable parameters); see ``docs/model.md`` for the mapping of its weights onto the official keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from scfm.data.packed import N_GENES

T_POS = N_GENES  # 19264: target read-depth token
S_POS = N_GENES + 1  # 19265: source read-depth token
N_POS = N_GENES + 2  # 19266: positions seen by the decoder (genes + T + S)
PAD_POS = N_POS  # 19266: position id of encoder padding (the extra pos_emb row)

AttentionKind = Literal["performer", "sdpa"]


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of an xTrimoGene model.

    Widths follow the official naming: the value and gene embeddings live at the encoder width,
    ``decoder_embed`` projects to the decoder width.
    """

    name: str = "custom"
    # value embedding (auto-discretization)
    n_bins: int = 100  # learned bin vectors the scalar value is softly assigned to
    bin_alpha: float = 1.0  # residual scaling: logits = alpha * h + mlp2(h)
    # encoder: post-norm ReLU transformer over the nonzero, unmasked genes + T + S
    enc_dim: int = 768
    enc_depth: int = 12
    enc_heads: int = 12
    enc_ffn_dim: int = 3072
    # decoder: pre-norm transformer over all 19,266 positions
    dec_dim: int = 512
    dec_depth: int = 6
    dec_heads: int = 8
    dec_dim_head: int = 64
    dec_ffn_dim: int = 2048
    dec_attention: AttentionKind = "performer"
    nb_features: int | None = None  # FAVOR+ random features; None = floor(d_head * ln d_head)
    # training-time options (no effect on the parameter layout)
    dropout: float = 0.0  # encoder layers only, as in the official model
    grad_checkpoint: bool = False  # recompute encoder/decoder blocks in backward to save memory

    def __post_init__(self) -> None:
        if self.enc_dim % self.enc_heads:
            raise ValueError(f"enc_dim {self.enc_dim} not divisible by {self.enc_heads} heads")
        if self.dec_attention not in ("performer", "sdpa"):
            raise ValueError(
                f"dec_attention must be 'performer' or 'sdpa', got {self.dec_attention!r}"
            )

    @property
    def n_features(self) -> int:
        """Number of FAVOR+ random features per head (266 for d_head = 64, as official)."""
        if self.nb_features is not None:
            return self.nb_features
        return int(self.dec_dim_head * math.log(self.dec_dim_head))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (``tiny``, ``3m``, ``10m``, ``100m``), optionally with fields replaced.

        Examples
        --------
        >>> ModelConfig.from_name("100m").enc_depth
        12
        >>> ModelConfig.from_name("tiny", dec_attention="sdpa").dec_attention
        'sdpa'
        """
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (for checkpoints, YAML, MLflow params)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise instead of being dropped silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown ModelConfig fields {sorted(unknown)} (written by a newer scfm?)"
            )
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # tests: the decoder still spans 19,266 positions, so keep it narrow
    "tiny": ModelConfig(
        name="tiny",
        enc_dim=32,
        enc_depth=2,
        enc_heads=4,
        enc_ffn_dim=64,
        dec_dim=16,
        dec_depth=1,
        dec_heads=2,
        dec_dim_head=8,
        dec_ffn_dim=32,
    ),
    # ≈ 3.4M, 72 % of it the gene embedding table (19,267 × 128)
    "3m": ModelConfig(
        name="3m",
        enc_dim=128,
        enc_depth=4,
        enc_heads=4,
        enc_ffn_dim=512,
        dec_dim=64,
        dec_depth=2,
        dec_heads=4,
        dec_dim_head=16,
        dec_ffn_dim=256,
    ),
    # ≈ 10.3M
    "10m": ModelConfig(
        name="10m",
        enc_dim=256,
        enc_depth=6,
        enc_heads=8,
        enc_ffn_dim=1024,
        dec_dim=128,
        dec_depth=3,
        dec_heads=4,
        dec_dim_head=32,
        dec_ffn_dim=512,
    ),
    # the released scFoundation 0.1B model: 119,252,285 trainable parameters
    "100m": ModelConfig(
        name="100m",
        enc_dim=768,
        enc_depth=12,
        enc_heads=12,
        enc_ffn_dim=3072,
        dec_dim=512,
        dec_depth=6,
        dec_heads=8,
        dec_dim_head=64,
        dec_ffn_dim=2048,
        dropout=0.1,
    ),
}


@dataclass(frozen=True)
class RDAConfig:
    """Knobs of the RDA objective (defaults follow the scFoundation paper / official config)."""

    min_total_counts: float = 1000.0  # cells below this are not down-sampled
    beta_a: float = 2.0  # down-sampling rate γ ~ Beta(beta_a, beta_b)
    beta_b: float = 2.0
    downsample_prob: float = 0.5  # chance an eligible cell is down-sampled, else duplicated
    mask_nonzero_prob: float = 0.3  # official value_mask_prob
    mask_zero_prob: float = 0.03  # official zero_mask_prob
    replace_prob: float = 0.8  # masked nonzero genes hidden (of those not given a random value)
    random_value_prob: float = 0.1  # masked nonzero genes shown another gene's value
    max_encoder_genes: int = 14998  # official mae_encoder_max_seq_len 15,000 minus T and S
    scale: float = 1e4  # normalization target sum
    pad_to_multiple: int = 1  # round the encoder length up (fewer shapes for torch.compile)
