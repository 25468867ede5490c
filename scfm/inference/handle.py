"""A loaded model with the inference API as methods: ``m = scfm.load_model(spec)``.

::

    m = scfm.load_model("models:/scfm-10m/3")      # weights read once, kept on the device
    m.embed(adata)                                 # adata.obsm["X_scfm"]
    m.gene_embeddings(adata, cells=adata.obs.cell_type == "B")
    m.enhance(adata, fold=10)

Each method is :func:`scfm.embed` (…) with this model; the module-level functions take a model
spec and load it per call.
"""

from __future__ import annotations

from typing import Any

import torch

from scfm.inference.loading import ModelInfo
from scfm.model.xtrimogene import XTrimoGene


class Model:
    """An :class:`~scfm.model.XTrimoGene` on a device, with where it came from."""

    def __init__(self, module: XTrimoGene, info: ModelInfo) -> None:
        self.module = module
        self.info = info

    @property
    def cfg(self):
        return self.module.cfg

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def embed(self, adata, **kwargs: Any):
        """:func:`scfm.embed` with this model."""
        from scfm.inference.embed import embed

        return embed(adata, self, **kwargs)

    def gene_embeddings(self, adata, **kwargs: Any):
        """:func:`scfm.gene_embeddings` with this model."""
        from scfm.inference.gene_embeddings import gene_embeddings

        return gene_embeddings(adata, self, **kwargs)

    def enhance(self, adata, **kwargs: Any):
        """:func:`scfm.enhance` with this model."""
        from scfm.inference.enhance import enhance

        return enhance(adata, self, **kwargs)

    def __repr__(self) -> str:
        variant = f", variant {self.info.variant}" if self.info.variant else ""
        return (
            f"Model({self.info.name}: {self.info.kind} from {self.info.source}{variant}, "
            f"on {self.device})"
        )
