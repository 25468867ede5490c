"""scfm: single-cell transcriptomics foundation models, end to end on Ray.

The inference API is available at the top level and imported on first use (``import scfm`` does
not import torch)::

    scfm.embed(adata, model)            # adata.obsm["X_scfm"]
    scfm.gene_embeddings(adata, model, cells=...)
    scfm.enhance(adata, model, fold=10)  # adata.layers["scfm_enhanced"]
    scfm.load_model("models:/name/1")
    prepared = scfm.prepare(adata)      # validate + map genes once, then pass it to the above
"""

from __future__ import annotations

__version__ = "0.1.0"

from scfm import _lazy  # noqa: E402  (after __version__, which setuptools reads)

_lazy.install(
    __name__,
    {
        "embed": "scfm.inference.embed",
        "gene_embeddings": "scfm.inference.gene_embeddings",
        "enhance": "scfm.inference.enhance",
        "load_model": "scfm.inference.loading",
        "prepare": "scfm.data.prepared",
    },
)
__all__ = ["__version__", *__all__]  # noqa: F821 (set by _lazy.install)
