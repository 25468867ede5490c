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

from scfm import _lazy

# loaded on first use: importing a submodule (scfm.model.config) does not import torch
_lazy.install(
    __name__,
    {
        "PRESETS": "scfm.model.config",
        "ModelConfig": "scfm.model.config",
        "RDAConfig": "scfm.model.config",
        "XTrimoGene": "scfm.model.xtrimogene",
        "CellBatch": "scfm.model.rda",
        "collate": "scfm.model.rda",
        "masked_mse": "scfm.model.rda",
        "prepare_inference": "scfm.model.rda",
        "CheckpointError": "scfm.model.checkpoint",
        "load_checkpoint": "scfm.model.checkpoint",
        "load_official_checkpoint": "scfm.model.checkpoint",
        "save_checkpoint": "scfm.model.checkpoint",
    },
)
