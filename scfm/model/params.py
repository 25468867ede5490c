"""Parameter counts per part of the model (built on the meta device: instant, no memory)."""

from __future__ import annotations

import torch
from torch import nn

from scfm.model.config import ModelConfig
from scfm.model.xtrimogene import XTrimoGene

PARTS = ("token_emb", "pos_emb", "encoder", "decoder_embed", "decoder", "norm", "to_final")


def parameter_counts(model: ModelConfig | nn.Module) -> dict[str, int]:
    """Trainable parameters per top-level part, plus ``"total"``.

    Parameters
    ----------
    model
        A config (the model is built on the meta device to count) or a built model.

    Returns
    -------
    dict
        Keys ``token_emb, pos_emb, encoder, decoder_embed, decoder, norm, to_final, total``
        (the official checkpoint's top-level modules). Buffers (the Performer projections)
        are not parameters and are not counted.
    """
    if isinstance(model, ModelConfig):
        with torch.device("meta"):
            model = XTrimoGene(model)
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = name.split(".", 1)[0]
            counts[part] = counts.get(part, 0) + p.numel()
    counts["total"] = sum(counts.values())
    return counts
