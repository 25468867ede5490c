"""The scIB metrics of one representation, computed with ``scib-metrics`` (Luecken et al. 2022).

A thin wrapper around the metric functions of :mod:`scib_metrics`, so that every representation
of a data set is scored on the same cells, with the same neighbour graph recipe, and the
aggregates are defined in one place. All metrics are scaled so that **higher is better**, in
[0, 1]:

==================== ======= ==============================================================
metric               half    what a high value means
==================== ======= ==============================================================
``leiden_nmi``       bio     Leiden clusters of the 15-NN graph agree with the labels (NMI;
                             the best of 10 resolutions 0.2 … 2.0, as scib-metrics sweeps)
``leiden_ari``       bio     the same clusters by adjusted Rand index (at the best-NMI
                             resolution)
``silhouette_label`` bio     cell-type ASW: labels form compact, separated groups,
                             ``(ASW + 1) / 2``
``isolated_labels``  bio     the labels present in the fewest batches are separated (their
                             mean rescaled silhouette; with one batch every label counts)
``clisi``            bio     a cell's 90 nearest neighbours share its label (cLISI, scaled)
``silhouette_batch`` batch   within each label, batches overlap: ``1 − |ASW of batch|``
``ilisi``            batch   a cell's 90 nearest neighbours come from many batches (iLISI,
                             scaled by the number of batches)
``kbet``             batch   kBET acceptance rate per label (chi² test at α = 0.05 of the batch
                             frequencies among diffusion-map neighbours within each label),
                             averaged over labels; see :func:`kbet_per_label`
``graph_connectivity`` batch each label's cells form one connected 15-NN subgraph
==================== ======= ==============================================================

Aggregates, as ``scib_metrics.benchmark.Benchmarker.get_results`` computes them (unscaled
values): ``bio_conservation`` = mean of the bio metrics, ``batch_correction`` = mean of the batch
metrics, ``total = 0.6 · bio_conservation + 0.4 · batch_correction``. Without a batch key only
the bio half is computed and ``total = bio_conservation`` (batch columns are NaN).

Neighbours are exact (scikit-learn, Euclidean, the cell itself first) up to
``exact_knn_max_cells`` cells and approximate (pynndescent, what scib-metrics uses) above; the
15-, 50- and 90-NN graphs are the first columns of one 90-NN search, as in scib-metrics.

scib-metrics, jax and igraph are imported inside the functions (``pip install scib-metrics``).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

Half = Literal["bio", "batch"]


@dataclass(frozen=True)
class MetricInfo:
    """One column of the results table."""

    key: str
    name: str  # scib-metrics' display name
    half: Half


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("leiden_nmi", "Leiden NMI", "bio"),
    MetricInfo("leiden_ari", "Leiden ARI", "bio"),
    MetricInfo("silhouette_label", "Silhouette label", "bio"),
    MetricInfo("isolated_labels", "Isolated labels", "bio"),
    MetricInfo("clisi", "cLISI", "bio"),
    MetricInfo("silhouette_batch", "Silhouette batch", "batch"),
    MetricInfo("ilisi", "iLISI", "batch"),
    MetricInfo("kbet", "KBET", "batch"),
    MetricInfo("graph_connectivity", "Graph connectivity", "batch"),
)
BIO_METRICS = tuple(m.key for m in METRICS if m.half == "bio")
BATCH_METRICS = tuple(m.key for m in METRICS if m.half == "batch")
AGGREGATES = ("bio_conservation", "batch_correction", "total")
DISPLAY_NAMES = {m.key: m.name for m in METRICS} | {
    "bio_conservation": "Bio conservation",
    "batch_correction": "Batch correction",
    "total": "Total",
}
BIO_WEIGHT = 0.6  # scIB's weighting of the total score (Luecken et al. 2022)

# scib-metrics' neighbourhood sizes: 15 (Leiden, graph connectivity), 50 (kBET), 90 (LISI).
NEIGHBOURS = (15, 50, 90)
MAX_NEIGHBOURS = max(NEIGHBOURS)


def neighbours(
    X: np.ndarray,
    n_neighbors: int = MAX_NEIGHBOURS,
    *,
    exact_max_cells: int = 50_000,
    n_jobs: int = 1,
    seed: int = 0,
):
    """The ``n_neighbors`` nearest neighbours of every cell (itself included, first).

    Returns a :class:`scib_metrics.nearest_neighbors.NeighborsResults`.
    """
    from scib_metrics.nearest_neighbors import NeighborsResults, pynndescent

    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    if n <= n_neighbors:
        raise ValueError(
            f"{n} cells but {n_neighbors} neighbours per cell are needed: score more cells"
        )
    if n > exact_max_cells:
        return pynndescent(X, n_neighbors=n_neighbors, random_state=seed, n_jobs=n_jobs)
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute", n_jobs=n_jobs).fit(X)
    dist, idx = nn.kneighbors(X)
    # Ties at distance 0 (duplicate cells) may put another cell first: put the cell itself first,
    # as pynndescent does, so that the graphs scib-metrics builds contain the self edge.
    rows = np.arange(n)
    not_first = idx[:, 0] != rows
    if not_first.any():
        for i in np.flatnonzero(not_first):
            pos = np.flatnonzero(idx[i] == i)
            j = pos[0] if pos.size else n_neighbors - 1
            idx[i, 1 : j + 1], dist[i, 1 : j + 1] = idx[i, :j].copy(), dist[i, :j].copy()
            idx[i, 0], dist[i, 0] = i, 0.0
    return NeighborsResults(indices=idx.astype(np.int64), distances=dist.astype(np.float32))


@dataclass
class ScibScores:
    """The metrics of one representation (NaN where undefined) and the seconds each took."""

    values: dict[str, float]
    seconds: dict[str, float]

    def aggregates(self) -> dict[str, float]:
        return aggregate_scores(self.values)


def aggregate_scores(values: dict[str, float]) -> dict[str, float]:
    """``bio_conservation``, ``batch_correction`` and ``total`` (see the module docstring)."""
    bio = _nanmean([values.get(k, np.nan) for k in BIO_METRICS])
    batch = _nanmean([values.get(k, np.nan) for k in BATCH_METRICS])
    total = bio if np.isnan(batch) else BIO_WEIGHT * bio + (1 - BIO_WEIGHT) * batch
    return {"bio_conservation": bio, "batch_correction": batch, "total": total}


def _nanmean(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def cache_jax_compilations() -> str | None:
    """Keep jax's compiled XLA programs on disk (``user_cache_dir("jax")``) unless the user
    chose a cache already (``JAX_COMPILATION_CACHE_DIR`` or jax's config); returns the folder.

    scib-metrics' silhouette, LISA and kBET kernels are jitted: without the cache every new
    process (a CLI call, a notebook kernel, a Ray worker) compiles them again (scoring 600 cells
    in a new process: 16 s, 7 s with the cache). jax recompiles when its version or the program
    changes. It takes effect when called before the process's first jax compilation.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:  # set by the user (config or environment)
        return jax.config.jax_compilation_cache_dir
    from scfm.runtime import user_cache_dir

    folder = user_cache_dir("jax")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: compile as jax does by default
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # the kernels here compile in well under jax's default 1 s threshold, yet add up
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(folder)


def scib_scores(
    X: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray | None = None,
    *,
    exact_knn_max_cells: int = 50_000,
    n_jobs: int = 1,
    seed: int = 0,
) -> ScibScores:
    """Every scIB metric of the representation ``X`` (cells × dims).

    Parameters
    ----------
    X
        The representation, one row per cell.
    labels
        Cell-type labels (at least two classes).
    batches
        Batch of each cell (at least two values), or None for the bio-conservation half only.
    exact_knn_max_cells
        Above this many cells the neighbours are approximate (pynndescent).
    n_jobs
        Threads of the neighbour search.
    seed
        Seed of pynndescent and of the Leiden clustering.
    """
    import scib_metrics

    cache_jax_compilations()
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    if X.ndim != 2 or X.shape[0] != labels.size:
        raise ValueError(f"X is {X.shape} but there are {labels.size} labels")
    if not np.isfinite(X).all():
        raise ValueError("the representation holds NaN or infinite values")
    one_batch = batches is None
    batch = np.zeros(labels.size, dtype=str) if one_batch else np.asarray(batches).astype(str)
    values: dict[str, float] = {}
    seconds: dict[str, float] = {}

    def timed(key: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[key] = time.perf_counter() - start
        return out

    nn = timed("neighbours", neighbours, X, exact_max_cells=exact_knn_max_cells, n_jobs=n_jobs)
    nn15, nn50, nn90 = (nn.subset_neighbors(n=k) for k in NEIGHBOURS)
    with warnings.catch_warnings():
        # jax's "no GPU/TPU found" and numpy's empty-slice warnings are not actionable here.
        warnings.simplefilter("ignore", RuntimeWarning)
        nmi_ari = timed(
            "leiden", scib_metrics.nmi_ari_cluster_labels_leiden, nn15, labels, seed=seed
        )
        values["leiden_nmi"], values["leiden_ari"] = float(nmi_ari["nmi"]), float(nmi_ari["ari"])
        values["silhouette_label"] = float(
            timed("silhouette_label", scib_metrics.silhouette_label, X, labels)
        )
        values["isolated_labels"] = float(
            timed("isolated_labels", scib_metrics.isolated_labels, X, labels, batch)
        )
        values["clisi"] = float(timed("clisi", scib_metrics.clisi_knn, nn90, labels))
        if one_batch:
            values |= {k: float("nan") for k in BATCH_METRICS}
        else:
            values["silhouette_batch"] = timed(
                "silhouette_batch", _silhouette_batch, X, labels, batch
            )
            values["ilisi"] = float(timed("ilisi", scib_metrics.ilisi_knn, nn90, batch))
            values["kbet"] = timed(
                "kbet", kbet_per_label, nn50, batch, labels, exact_max_cells=exact_knn_max_cells
            )
            values["graph_connectivity"] = float(
                timed("graph_connectivity", scib_metrics.graph_connectivity, nn15, labels)
            )
    return ScibScores(values, seconds)


def _silhouette_batch(X: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> float:
    """scIB's batch ASW; NaN (with a warning) when no label occurs in two batches."""
    import scib_metrics

    per_label = pd.crosstab(labels, batch)
    if not ((per_label > 0).sum(axis=1) >= 2).any():
        logger.warning("no label occurs in two batches: the batch ASW is undefined (NaN)")
        return float("nan")
    return float(scib_metrics.silhouette_batch(X, labels, batch))


def kbet_per_label(
    nn,
    batches: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.05,
    diffusion_n_comps: int = 100,
    exact_max_cells: int = 50_000,
    seed: int = 0,
) -> float:
    """kBET per label as ``scib_metrics.kbet_per_label`` computes it, with exact neighbours.

    The same procedure, step for step (scib-metrics 0.5, after scIB): for each label, the
    label's cells in the UMAP connectivity graph of ``nn`` (the 50-NN graph); labels with fewer
    than 10 cells or a single batch are skipped (NaN); ``k0 = min(70, max(10, mean cells per
    batch / 4))``; if the subgraph is not connected, only components of at least ``3 · k0``
    cells are kept, and if they hold less than 75 % of the label the label scores 0; a
    diffusion map (``diffusion_n_comps`` components, eigenvalues rescaled by λ / (1 − λ)) gives
    each cell ``k0`` neighbours, and ``scib_metrics.kbet`` tests their batch frequencies
    (acceptance rate at ``alpha``); a failed diffusion map scores 0. The score is the mean over
    the labels that were not skipped.

    The one difference: scib-metrics finds the diffusion-space neighbours with pynndescent,
    whose numba compilation costs 50-90 s in every new process on a 2-core machine; here they
    are exact (scikit-learn) up to ``exact_max_cells`` cells per label, which is the quantity
    pynndescent approximates.
    """
    import scipy.sparse as sp
    from scib_metrics import kbet
    from scipy.sparse.csgraph import connected_components

    batches = np.asarray(pd.Categorical(np.asarray(batches)).codes)
    labels = np.asarray(labels)
    conn = sp.csr_matrix(nn.knn_graph_connectivities)
    size_max = 2**31 - 1
    scores = []
    for label in np.unique(labels):
        mask = labels == label
        sub = conn[mask][:, mask].tocsr()
        sub.sort_indices()
        n_obs, b = sub.shape[0], batches[mask]
        if n_obs < 10 or np.unique(b).size == 1:
            scores.append(np.nan)
            continue
        k0 = int(min(70, max(10, np.floor(np.mean(pd.Series(b).value_counts()) / 4))))
        if k0 * n_obs >= size_max:
            k0 = int(np.floor(size_max / n_obs))
        n_comp, comp = connected_components(sub, connection="strong")
        keep = np.arange(n_obs)
        if n_comp > 1:
            sizes = pd.Series(comp).value_counts()
            keep = np.flatnonzero(np.isin(comp, sizes[sizes >= 3 * k0].index))
            if keep.size / n_obs < 0.75:
                scores.append(0.0)  # too many small components: 100 % rejection, as scIB
                continue
            sub = sub[keep][:, keep].tocsr()
            sub.sort_indices()
        try:
            emb = _diffusion_map(sub, min(diffusion_n_comps, keep.size - 1), seed)
            knn = neighbours(emb, k0 + 1, exact_max_cells=exact_max_cells, seed=seed)
            scores.append(float(kbet(knn, b[keep], alpha=alpha)[0]))
        except ValueError:
            scores.append(0.0)  # the diffusion map failed: 100 % rejection, as scib-metrics
    return _nanmean(scores)


def _diffusion_map(conn, n_comps: int, seed: int = 0) -> np.ndarray:
    """Multiscale diffusion map of a connectivity graph (scanpy's / scib-metrics' recipe)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    q = np.asarray(conn.sum(axis=0)).ravel()
    K = sp.diags(1.0 / q) @ conn @ sp.diags(1.0 / q)  # density normalization (Coifman 2005)
    z = np.sqrt(np.asarray(K.sum(axis=0)).ravel())
    T = (sp.diags(1.0 / z) @ K @ sp.diags(1.0 / z)).astype(np.float64)
    n_comps = min(T.shape[0] - 1, n_comps)
    v0 = np.random.default_rng(seed).uniform(-1, 1, T.shape[0])  # seeded ARPACK start
    evals, evecs = eigsh(T, k=n_comps, which="LM", v0=v0)
    evals, evecs = evals.astype(np.float32)[::-1], evecs.astype(np.float32)[:, ::-1]
    evals = evals + 1e-8
    scaled = np.array([e if e == 1 else e / (1 - e) for e in evals], dtype=np.float32)
    return np.ascontiguousarray(evecs * scaled)


def results_frame(scores: dict[str, ScibScores]) -> pd.DataFrame:
    """One row per representation: the metrics then the aggregates (index = representation)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, s in scores.items():
        rows[name] = {m.key: s.values.get(m.key, np.nan) for m in METRICS} | s.aggregates()
    return pd.DataFrame.from_dict(rows, orient="index")
