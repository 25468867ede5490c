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

from scfm import _lazy

_lazy.install(
    __name__,
    {
        "embed": "scfm.inference.embed",
        "embed_csr": "scfm.inference.embed",
        "gene_embeddings": "scfm.inference.gene_embeddings",
        "enhance": "scfm.inference.enhance",
        "prepare": "scfm.data.prepared",
        "load_model": "scfm.inference.loading",
        "Model": "scfm.inference.handle",
        "load_model_with_info": "scfm.inference.loading",
        "ModelInfo": "scfm.inference.loading",
        "InferenceEngine": "scfm.inference.engine",
        "embed_dataset": "scfm.inference.ray_batch",
        "EmbedJobConfig": "scfm.inference.ray_batch",
        "plot_umap": "scfm.inference.plots",
    },
)
