"""UMAP coordinates and pictures of embeddings, and the on-disk cache of umap's kernels."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest


def _clusters(n_per: int = 60, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=10.0, size=(3, dims))
    labels = np.repeat(np.arange(3), n_per)
    return (centers[labels] + rng.normal(size=(labels.size, dims))).astype(np.float32), labels


def test_umap_keeps_separated_clusters_apart_and_is_seeded():
    from scfm.inference.plots import umap_coordinates

    emb, labels = _clusters()
    xy = umap_coordinates(emb, seed=0)
    assert xy.shape == (emb.shape[0], 2) and np.isfinite(xy).all()
    centroids = np.stack([xy[labels == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(xy[labels == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 3 * spread  # each cluster is its own island
    np.testing.assert_array_equal(umap_coordinates(emb, seed=0), xy)
    with pytest.raises(ValueError, match="at least 3 cells"):
        umap_coordinates(emb[:2])


def test_umap_kernels_are_compiled_once_per_installation():
    """After a UMAP, umap-learn's kernels have numba's on-disk cache, and it holds their code."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    from scfm.inference.plots import UMAP_KERNEL_MODULES, cache_umap_kernels, umap_coordinates

    umap_coordinates(_clusters(n_per=10)[0])
    assert cache_umap_kernels() > 0  # once per process: the same count again
    used = [
        k
        for name in UMAP_KERNEL_MODULES
        for k in vars(importlib.import_module(name)).values()
        if isinstance(k, Dispatcher) and k.overloads
    ]
    assert used and not any(isinstance(k._cache, NullCache) for k in used)
    # the kernels that take the compile time (their callees are compiled into them) are on disk
    folders = {Path(k._cache.cache_path) for k in used}
    cached = {f.name.split(".")[1].rsplit("-", 1)[0] for d in folders for f in d.glob("*.nbi")}
    graph_and_layout = {
        "smooth_knn_dist",
        "compute_membership_strengths",
        "_optimize_layout_euclidean_single_epoch",
    }
    assert graph_and_layout <= cached, cached
