"""UMAP of cell embeddings coloured by a metadata column (scanpy neighbours + UMAP)."""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np

MISSING_LABELS = {"", "None", "nan", "NaN"}
# umap-learn's numba kernels that it compiles without an on-disk cache (pynndescent's are cached)
UMAP_KERNEL_MODULES = ("umap.umap_", "umap.layouts", "umap.utils")


@functools.cache
def cache_umap_kernels() -> int:
    """Keep umap-learn's compiled numba kernels on disk (once per process; returns how many).

    umap-learn compiles its neighbour-graph and layout kernels without numba's cache, so every
    new process (a CLI call, a notebook kernel, a Ray worker) spends ~10 s compiling them before
    its first UMAP. With the cache, only the first process of an installation compiles; the
    cache lives next to umap's own bytecode (or numba's user cache folder when that is
    read-only) and numba recompiles when umap-learn or numba change."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    n = 0
    for name in UMAP_KERNEL_MODULES:
        for kernel in vars(importlib.import_module(name)).values():
            if isinstance(kernel, Dispatcher) and isinstance(kernel._cache, NullCache):
                try:
                    kernel.enable_caching()
                except RuntimeError:  # no writable cache location: compile as umap does
                    continue
                n += 1
    return n


def umap_coordinates(embeddings: np.ndarray, *, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` UMAP of ``embeddings`` (``sc.pp.neighbors(use_rep=...)`` then ``sc.tl.umap``)."""
    import anndata as ad
    import scanpy as sc

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 3:
        raise ValueError(f"need a (cells, dims) array with at least 3 cells, got {emb.shape}")
    adata = ad.AnnData(obsm={"X_rep": emb}, shape=(emb.shape[0], 0))
    cache_umap_kernels()
    sc.pp.neighbors(
        adata, use_rep="X_rep", n_neighbors=min(n_neighbors, emb.shape[0] - 1), random_state=seed
    )
    sc.tl.umap(adata, random_state=seed)
    return np.asarray(adata.obsm["X_umap"])


def umap_figure(
    embeddings: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    color_name: str | None = None,
    title: str = "",
    max_cells: int | None = 20_000,
    seed: int = 0,
) -> Any:
    """A matplotlib figure of the UMAP of ``embeddings``, one colour per label.

    At most ``max_cells`` cells (a seeded random subset) are embedded, so the plot stays quick on
    large outputs. Returns the figure (save it or log it with ``scfm.tracking.log_figure``).
    """
    import matplotlib.pyplot as plt

    emb = np.asarray(embeddings)
    n = emb.shape[0]
    keep = np.arange(n)
    if max_cells is not None and n > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))
    xy = umap_coordinates(emb[keep], seed=seed)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.7, linewidths=0)
    else:
        lab = np.array(["(unknown)" if str(v) in MISSING_LABELS else str(v) for v in labels])[keep]
        names, counts = np.unique(lab, return_counts=True)
        order = names[np.argsort(-counts, kind="stable")]
        cmap = plt.get_cmap("tab20" if len(order) > 10 else "tab10")
        for i, name in enumerate(order):
            sel = lab == name
            ax.scatter(
                xy[sel, 0], xy[sel, 1], s=4, alpha=0.8, linewidths=0, color=cmap(i % cmap.N),
                label=f"{name} ({sel.sum():,})",
            )  # fmt: skip
        ax.legend(
            title=color_name, markerscale=3, fontsize=8, frameon=False,
            bbox_to_anchor=(1.01, 1), loc="upper left",
        )  # fmt: skip
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    shown = f"{keep.size:,} of {n:,} cells" if keep.size < n else f"{n:,} cells"
    ax.set_title(f"{title}\n{shown}" if title else shown, fontsize=10)
    fig.tight_layout()
    return fig


def plot_umap(
    adata, color: str | None = None, *, use_rep: str = "X_scfm", path: str | None = None, **kw: Any
) -> Any:
    """UMAP figure of ``adata.obsm[use_rep]`` coloured by ``adata.obs[color]``; saved if ``path``.

    ``adata`` itself is not modified (its own ``X_umap`` / neighbours stay as they are).
    """
    if use_rep not in adata.obsm:
        raise KeyError(f"adata.obsm has no {use_rep!r}; run scfm.embed(adata, model) first")
    labels = None
    if color is not None:
        if color not in adata.obs:
            raise KeyError(f"adata.obs has no column {color!r} (columns: {list(adata.obs)})")
        labels = adata.obs[color].astype(str).to_numpy()
    fig = umap_figure(np.asarray(adata.obsm[use_rep]), labels, color_name=color, **kw)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
