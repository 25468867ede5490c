"""Gene modules: cluster context-specific gene embeddings of a cell group, test them for gene sets.

    cells of a group (obs[group_key] == value) ──► genes expressed in ≥ min_frac of them
      │ decoder states of those genes (scfm.inference.gene_embeddings), averaged over the cells
      ▼
    k-means (cosine: on L2-normalized embeddings) or Ward clustering ──► modules
      │ hypergeometric test of every module × gene set (universe = the clustered genes),
      │ Benjamini–Hochberg FDR over all tests
      ▼
    modules.csv, enrichment.csv, enrichment heatmap

Gene sets come from the registered GMT files (``scfm data list``): MSigDB Hallmark, C2 canonical
pathways, cell cycle, mitochondrial and ribosomal genes.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

GENE_SET_RESOURCES: dict[str, str] = {
    "hallmark": "hallmark_genesets",
    "c2_cp": "c2_cp_genesets",
    "cell_cycle": "cell_cycle_genesets",
    "mito": "mito_genesets",
    "ribo": "ribo_genesets",
}


# ----------------------------------------------------------------------------------- gene sets
def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of a GMT file (``name<TAB>description<TAB>gene…``; ``.gz`` allowed).

    Raises
    ------
    ValueError
        A line has no genes, or a set name repeats.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    sets: dict[str, list[str]] = {}
    with opener(path, "rt") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(f"{path}:{n}: a GMT line needs a name, a description and genes")
            name = parts[0]
            if name in sets:
                raise ValueError(f"{path}:{n}: gene set {name!r} appears twice")
            sets[name] = list(dict.fromkeys(g.strip() for g in parts[2:] if g.strip()))
    return sets


def load_gene_sets(collections: Sequence[str] = ("hallmark",)) -> dict[str, dict[str, list[str]]]:
    """Registered gene-set collections by short name (see :data:`GENE_SET_RESOURCES`)."""
    from scfm import datasets

    unknown = [c for c in collections if c not in GENE_SET_RESOURCES]
    if unknown:
        raise ValueError(
            f"unknown gene-set collections {unknown}; choose from {sorted(GENE_SET_RESOURCES)}"
        )
    return {c: read_gmt(datasets.fetch(GENE_SET_RESOURCES[c])) for c in collections}


# ---------------------------------------------------------------------------------- statistics
def hypergeom_pvalue(
    overlap: np.ndarray, universe: int, set_size: np.ndarray, module_size: np.ndarray
) -> np.ndarray:
    """P(X ≥ overlap) for X ~ Hypergeometric(universe, set_size, module_size)."""
    from scipy.stats import hypergeom

    return hypergeom.sf(np.asarray(overlap) - 1, universe, set_size, module_size)


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (step-up, monotone, capped at 1), input order."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def enrichment(
    modules: Mapping[str, Iterable[str]],
    gene_sets: Mapping[str, Mapping[str, Iterable[str]]] | Mapping[str, Iterable[str]],
    universe: Iterable[str],
    *,
    min_set_size: int = 5,
) -> pd.DataFrame:
    """Hypergeometric enrichment of every module against every gene set, BH FDR over all tests.

    Parameters
    ----------
    modules
        Module name → genes.
    gene_sets
        Collection → set name → genes (or a single collection: set name → genes).
    universe
        All genes that could be in a module (the clustered genes); gene sets are restricted to it.
    min_set_size
        Gene sets with fewer genes in the universe are not tested.

    Returns
    -------
    DataFrame
        ``module, collection, gene_set, overlap, module_size, set_size, universe_size, expected,
        fold_enrichment, p_value, fdr, genes``, sorted by p-value.
    """
    universe = {g.upper() for g in universe}
    first = next(iter(gene_sets.values()), None)
    if first is not None and not isinstance(first, Mapping):
        gene_sets = {"gene_sets": gene_sets}
    sets = []
    for collection, members in gene_sets.items():
        for name, genes in members.items():
            restricted = {g.upper() for g in genes} & universe
            if len(restricted) >= min_set_size:
                sets.append((collection, name, restricted))
    mods = {str(m): {g.upper() for g in genes} & universe for m, genes in modules.items()}
    M = len(universe)
    rows = []
    for m, mgenes in mods.items():
        for collection, name, sgenes in sets:
            hit = mgenes & sgenes
            rows.append(
                (m, collection, name, len(hit), len(mgenes), len(sgenes), ",".join(sorted(hit)))
            )
    cols = ["module", "collection", "gene_set", "overlap", "module_size", "set_size", "genes"]
    df = pd.DataFrame(rows, columns=cols)
    df["universe_size"] = M
    df["expected"] = df["module_size"] * df["set_size"] / max(M, 1)
    df["fold_enrichment"] = np.where(df["expected"] > 0, df["overlap"] / df["expected"], np.nan)
    df["p_value"] = (
        hypergeom_pvalue(
            df["overlap"].to_numpy(), M, df["set_size"].to_numpy(), df["module_size"].to_numpy()
        )
        if len(df)
        else []
    )
    df["fdr"] = benjamini_hochberg(df["p_value"].to_numpy())
    order = [
        "module",
        "collection",
        "gene_set",
        "overlap",
        "module_size",
        "set_size",
        "universe_size",
        "expected",
        "fold_enrichment",
        "p_value",
        "fdr",
        "genes",
    ]
    return df[order].sort_values(["p_value", "module"], kind="stable").reset_index(drop=True)


# -------------------------------------------------------------------------------- clustering
def cluster_genes(
    embeddings: np.ndarray,
    n_modules: int,
    *,
    method: Literal["kmeans", "ward"] = "kmeans",
    seed: int = 0,
) -> np.ndarray:
    """Module index per gene; rows are L2-normalized first (cosine geometry)."""
    from sklearn.cluster import AgglomerativeClustering, KMeans

    X = np.asarray(embeddings, dtype=np.float64)
    if not 2 <= n_modules <= X.shape[0]:
        raise ValueError(f"n_modules must be between 2 and the number of genes ({X.shape[0]})")
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if method == "kmeans":
        return KMeans(n_clusters=n_modules, n_init=10, random_state=seed).fit_predict(X)
    if method == "ward":
        return AgglomerativeClustering(n_clusters=n_modules, linkage="ward").fit_predict(X)
    raise ValueError(f"method must be 'kmeans' or 'ward', got {method!r}")


# ------------------------------------------------------------------------ gene embeddings
def select_genes(
    vocab_counts: sp.csr_matrix, *, min_frac: float = 0.1, max_genes: int = 1000
) -> np.ndarray:
    """Vocabulary indices of genes expressed in ≥ ``min_frac`` of the cells, at most
    ``max_genes`` of them (highest mean log-normalized expression first), sorted."""
    X = sp.csr_matrix(vocab_counts)
    frac = np.asarray((X > 0).mean(axis=0)).ravel()
    totals = np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1.0)
    L = sp.csr_matrix(sp.diags(1e4 / totals) @ X)
    L.data = np.log1p(L.data)
    mean = np.asarray(L.mean(axis=0)).ravel()
    cand = np.flatnonzero(frac >= min_frac)
    cand = cand[np.argsort(-mean[cand], kind="stable")][:max_genes]
    return np.sort(cand)


@dataclass
class GeneModules:
    """Result of :func:`find_gene_modules`."""

    modules: pd.DataFrame  # gene, vocab_index, module
    enrichment: pd.DataFrame
    embeddings: np.ndarray = field(repr=False)
    group: str = ""

    def top_hits(self, fdr: float = 0.05) -> pd.DataFrame:
        """The most significant gene set of each module with FDR below ``fdr``."""
        sig = self.enrichment[self.enrichment["fdr"] < fdr]
        return sig.sort_values("p_value").drop_duplicates("module").reset_index(drop=True)


def find_gene_modules(
    adata,
    model,
    *,
    cells=None,
    layer: str | None = None,
    n_modules: int = 10,
    method: Literal["kmeans", "ward"] = "kmeans",
    collections: Sequence[str] = ("hallmark",),
    min_frac: float = 0.1,
    max_genes: int = 1000,
    max_cells: int = 200,
    seed: int = 0,
    device: str = "auto",
    group: str = "",
    progress: bool = False,
) -> GeneModules:
    """Modules of the genes a cell group expresses, and their gene-set enrichment.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` (or ``layer``); any gene ids.
    model
        An ``XTrimoGene`` or a model spec (see :func:`scfm.inference.load_model`).
    cells
        The group: None (all cells), a boolean mask, positions or obs names.
    max_cells
        Average the gene embeddings over at most this many of the group's cells (seeded subset).
    """
    from scfm.data.genes import GeneVocab
    from scfm.data.validate import layer_matrix, validate_anndata
    from scfm.inference import gene_embeddings
    from scfm.inference.selection import cell_indices

    rows = cell_indices(adata, cells)
    if rows.size > max_cells:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=max_cells, replace=False))
    sub = adata[rows]
    X = layer_matrix(sub, layer)[0]
    mapping = validate_anndata(sub, layer=layer).mapping
    genes = select_genes(mapping.apply(X), min_frac=min_frac, max_genes=max_genes)
    if genes.size < n_modules:
        raise ValueError(
            f"only {genes.size} genes are expressed in ≥ {min_frac:.0%} of the group's cells; "
            "lower min_frac or n_modules"
        )
    names = list(np.asarray(GeneVocab.load().names)[genes])
    emb = gene_embeddings(
        adata,
        model,
        cells=rows,
        genes=names,
        layer=layer,
        aggregate="mean",
        batch_size=8,
        device=device,
        progress=progress,
    )
    labels = cluster_genes(emb.values, n_modules, method=method, seed=seed)
    modules = pd.DataFrame({"gene": emb.genes, "vocab_index": genes, "module": labels})
    by_module = {
        str(m): modules.loc[modules.module == m, "gene"].tolist()
        for m in sorted(modules.module.unique())
    }
    enr = enrichment(by_module, load_gene_sets(collections), emb.genes)
    return GeneModules(modules, enr, emb.values, group)
