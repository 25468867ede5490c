"""Inference with pretrained xTrimoGene models: cell and gene embeddings, read-depth enhancement.

::

    import scfm
    scfm.embed(adata, "models:/scfm-10m/1")          # adata.obsm["X_scfm"]
    scfm.enhance(adata, "models:/scfm-10m/1", fold=10)  # adata.layers["scfm_enhanced"]
    g = scfm.gene_embeddings(adata, model, cells=adata.obs.cell_type == "B")

Submodules import torch; this package's attributes are loaded on first use, so
``import scfm.inference`` (and the ``scfm`` CLI) stay cheap.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "embed": "scfm.inference.embed",
    "embed_csr": "scfm.inference.embed",
    "gene_embeddings": "scfm.inference.genes",
    "enhance": "scfm.inference.enhance",
    "load_model": "scfm.inference.loading",
    "load_model_with_info": "scfm.inference.loading",
    "ModelInfo": "scfm.inference.loading",
    "InferenceEngine": "scfm.inference.engine",
    "embed_dataset": "scfm.inference.ray_batch",
    "EmbedJobConfig": "scfm.inference.ray_batch",
    "plot_umap": "scfm.inference.plots",
}

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """Keeps the public functions visible under names their submodules share.

    Importing ``scfm.inference.embed`` (the module) makes the import system bind it on this
    package as ``embed``, which would hide the function ``embed``. Submodules are reachable
    through ``sys.modules`` and ``from scfm.inference.embed import ...`` regardless.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scfm.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
