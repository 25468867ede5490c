"""scfm: single-cell transcriptomics foundation models, end to end on Ray.

The inference API is available at the top level and imported on first use (``import scfm`` does
not import torch)::

    scfm.embed(adata, model)            # adata.obsm["X_scfm"]
    scfm.gene_embeddings(adata, model, cells=...)
    scfm.enhance(adata, model, fold=10)  # adata.layers["scfm_enhanced"]
    scfm.load_model("models:/name/1")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "embed": "scfm.inference.embed",
    "gene_embeddings": "scfm.inference.genes",
    "enhance": "scfm.inference.enhance",
    "load_model": "scfm.inference.loading",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scfm' has no attribute {name!r}")
