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
    CheckpointVersionError,
    GeneVocabularyMismatchError,
    OfficialCheckpointError,
    convert_official_state_dict,
    export_official_state_dict,
    load_checkpoint,
    load_official_checkpoint,
    save_checkpoint,
)
from scfm.model.config import (
    N_GENES,
    N_POS,
    PAD_POS,
    PRESETS,
    S_POS,
    T_POS,
    AttentionKind,
    ModelConfig,
)
from scfm.model.decoder import Decoder, ExactAttention
from scfm.model.embedding import AutoDiscretization
from scfm.model.encoder import Encoder
from scfm.model.packing import from_padded, gather_from_positions, scatter_to_positions, to_padded
from scfm.model.params import parameter_counts
from scfm.model.performer import FastAttention, linear_attention, softmax_kernel
from scfm.model.rda import CellBatch, RDAConfig, collate, masked_mse, prepare_inference
from scfm.model.xtrimogene import XTrimoGene

__all__ = [
    "N_GENES",
    "N_POS",
    "PAD_POS",
    "PRESETS",
    "S_POS",
    "T_POS",
    "AttentionKind",
    "AutoDiscretization",
    "CellBatch",
    "CheckpointError",
    "CheckpointVersionError",
    "Decoder",
    "Encoder",
    "ExactAttention",
    "FastAttention",
    "GeneVocabularyMismatchError",
    "ModelConfig",
    "OfficialCheckpointError",
    "RDAConfig",
    "XTrimoGene",
    "collate",
    "convert_official_state_dict",
    "export_official_state_dict",
    "gather_from_positions",
    "linear_attention",
    "load_checkpoint",
    "load_official_checkpoint",
    "masked_mse",
    "to_padded",
    "parameter_counts",
    "prepare_inference",
    "save_checkpoint",
    "scatter_to_positions",
    "softmax_kernel",
    "from_padded",
]
