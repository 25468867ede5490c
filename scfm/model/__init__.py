"""xTrimoGene (scFoundation) in pure torch: model, read-depth-aware objective, checkpoints.

Typical use::

    from scfm.model import ModelConfig, XTrimoGene, RDAConfig, collate, masked_mse

    model = XTrimoGene(ModelConfig.from_name("10m"))
    batch = collate(loader_batch, RDAConfig(), generator=rng).to(device)
    pred = model(*batch.encoder_inputs(), batch.masked)          # (B, 19264)
    loss = masked_mse(pred, batch.target, batch.masked)

    cells = prepare_inference(loader_batch)                      # no down-sampling / masking
    emb = model.embed_cells(*cells.encoder_inputs())             # (B, 4 * enc_dim)
"""

from __future__ import annotations

from scfm.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_official_checkpoint,
    save_checkpoint,
)
from scfm.model.config import PRESETS, ModelConfig
from scfm.model.rda import CellBatch, RDAConfig, collate, masked_mse, prepare_inference
from scfm.model.xtrimogene import XTrimoGene

__all__ = [
    "PRESETS",
    "CellBatch",
    "CheckpointError",
    "ModelConfig",
    "RDAConfig",
    "XTrimoGene",
    "collate",
    "load_checkpoint",
    "load_official_checkpoint",
    "masked_mse",
    "prepare_inference",
    "save_checkpoint",
]
