"""The two gene graphs of GEARS: co-expression between genes, co-membership between perturbations.

* **Co-expression** (``coexpression_graph``): Pearson correlation of the log-normalized
  expression of the *training* cells (control cells and training single perturbations, as GEARS),
  absolute value; every gene keeps its ``k + 1`` most correlated genes (itself included) whose
  |r| exceeds ``threshold`` (GEARS: k = 20, 0.4).
* **Perturbation graph** (``gene_set_graph``): GEARS links perturbable genes by the Jaccard
  similarity of their GO-term sets. GO is not available offline, so any gene-set collection
  stands in (GMT files: MSigDB Hallmark and C2 canonical pathways by default): the Jaccard
  index of two genes' set memberships, values above ``threshold`` (GEARS: 0.1), the ``k + 1``
  largest per gene (itself, Jaccard 1, included). A precomputed edge list (``source``,
  ``target``, ``importance`` columns — the layout of GEARS' ``go.csv``) works too.

Edges point from a neighbour (``src``) to the gene it informs (``dst``); ties are broken by node
order. Gene names are matched by canonical key (the vocabulary name when the gene maps onto the
19,264-gene vocabulary, so ``MARCHF8`` in a gene set meets ``MARCH8`` in the data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_GENE_SETS = ("hallmark", "c2_cp")


@dataclass(frozen=True)
class GraphConfig:
    """Settings of GEARS' two graphs (GEARS defaults)."""

    gene_sets: tuple[str, ...] = DEFAULT_GENE_SETS  # collections or GMT files
    edge_list: str | None = None  # a precomputed perturbation graph instead of gene sets
    pert_k: int = 20
    pert_threshold: float = 0.1
    coexpr_k: int = 20
    coexpr_threshold: float = 0.4


@dataclass
class GeneGraph:
    """A weighted directed graph over named nodes."""

    nodes: list[str]
    src: np.ndarray  # (E,) int64 neighbour
    dst: np.ndarray  # (E,) int64 the gene it informs
    weight: np.ndarray  # (E,) float32

    @property
    def n_edges(self) -> int:
        return int(self.src.size)

    def to_frame(self) -> pd.DataFrame:
        names = np.asarray(self.nodes, dtype=object)
        return pd.DataFrame(
            {"source": names[self.src], "target": names[self.dst], "importance": self.weight}
        )

    def edges(self) -> set[tuple[str, str]]:
        return set(zip(*(self.to_frame()[c] for c in ("source", "target")), strict=True))


def top_k_edges(sim: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, ...]:
    """For every column ``j`` (target), the ``k + 1`` rows with the largest ``sim[i, j]`` above
    ``threshold`` (ties: lower row first). Returns ``(src, dst, weight)``."""
    n = sim.shape[0]
    src, dst, w = [], [], []
    for j in range(sim.shape[1]):
        col = sim[:, j]
        cand = np.flatnonzero(col > threshold)
        order = cand[np.lexsort((cand, -col[cand]))][: k + 1]
        src.append(order)
        dst.append(np.full(order.size, j))
        w.append(col[order])
    cat = np.concatenate if n else (lambda _: np.zeros(0))
    return (
        cat(src).astype(np.int64),
        cat(dst).astype(np.int64),
        cat(w).astype(np.float32),
    )


def pearson_abs(X) -> np.ndarray:
    """``|r|`` between the columns of ``X`` (cells × genes, dense or sparse); 0 where a gene is
    constant."""
    n = X.shape[0]
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, np.float64)
    mean = np.asarray(X.mean(axis=0)).ravel()
    gram = (X.T @ X).toarray() if sp.issparse(X) else X.T @ X
    cov = gram / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.outer(sd, sd)
    r[~np.isfinite(r)] = 0.0
    return np.abs(np.clip(r, -1.0, 1.0))


def coexpression_graph(
    expr, genes: Sequence[str], *, k: int = 20, threshold: float = 0.4
) -> GeneGraph:
    """Co-expression graph over ``genes`` from cells × genes ``expr`` (see the module docstring)."""
    src, dst, w = top_k_edges(pearson_abs(expr), k, threshold)
    return GeneGraph(list(genes), src, dst, w)


def jaccard_matrix(membership: sp.csr_matrix) -> np.ndarray:
    """Jaccard index between the rows of a boolean genes × sets matrix (0 for empty rows)."""
    M = sp.csr_matrix(membership, dtype=np.float64)
    M.data[:] = 1.0
    inter = (M @ M.T).toarray()
    size = np.asarray(M.sum(axis=1)).ravel()
    union = size[:, None] + size[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def gene_set_graph(
    nodes: Sequence[str],
    gene_sets: Mapping[str, Iterable[str]],
    *,
    k: int = 20,
    threshold: float = 0.1,
) -> GeneGraph:
    """Perturbation graph over ``nodes`` (canonical keys) from gene-set co-membership.

    Parameters
    ----------
    gene_sets
        Set name → member keys (already canonical; see :func:`canonical_gene_sets`).
    """
    pos = {g: i for i, g in enumerate(nodes)}
    rows, cols = [], []
    for j, members in enumerate(gene_sets.values()):
        for g in set(members):
            if g in pos:
                rows.append(pos[g])
                cols.append(j)
    membership = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(nodes), len(gene_sets))
    )
    src, dst, w = top_k_edges(jaccard_matrix(membership), k, threshold)
    return GeneGraph(list(nodes), src, dst, w)


def restrict(graph: GeneGraph, nodes: Sequence[str], *, k: int | None = None) -> GeneGraph:
    """The subgraph over ``nodes`` (in that order); with ``k``, at most ``k + 1`` edges per
    target (the largest weights)."""
    pos = {g: i for i, g in enumerate(nodes)}
    names = np.asarray(graph.nodes, dtype=object)
    s = np.array([pos.get(n, -1) for n in names[graph.src]], dtype=np.int64)
    d = np.array([pos.get(n, -1) for n in names[graph.dst]], dtype=np.int64)
    keep = (s >= 0) & (d >= 0)
    s, d, w = s[keep], d[keep], graph.weight[keep]
    if k is not None and s.size:
        order = np.lexsort((s, -w, d))
        s, d, w = s[order], d[order], w[order]
        rank = np.arange(d.size) - np.searchsorted(d, d)
        sel = rank <= k
        s, d, w = s[sel], d[sel], w[sel]
    return GeneGraph(list(nodes), s, d, w.astype(np.float32))


# ------------------------------------------------------------------------------- gene sets
def read_edge_list(path: str | Path) -> GeneGraph:
    """An edge list (CSV / TSV with ``source``, ``target`` and ``importance`` or ``weight``)."""
    path = Path(path)
    sep = "\t" if path.suffix in (".tsv", ".txt") or path.name.endswith(".tsv.gz") else ","
    df = pd.read_csv(path, sep=sep)
    wcol = next((c for c in ("importance", "weight") if c in df.columns), None)
    if not {"source", "target"} <= set(df.columns) or wcol is None:
        raise ValueError(
            f"{path}: an edge list needs columns source, target and importance (or weight); "
            f"found {list(df.columns)}"
        )
    names = pd.Index(pd.unique(pd.concat([df["source"], df["target"]]).astype(str)))
    return GeneGraph(
        list(names),
        names.get_indexer(df["source"].astype(str)).astype(np.int64),
        names.get_indexer(df["target"].astype(str)).astype(np.int64),
        df[wcol].to_numpy(np.float32),
    )


def load_gene_set_collections(specs: Sequence[str]) -> dict[str, list[str]]:
    """Gene sets from registered collections (``hallmark``, ``c2_cp``, …) or GMT files, merged;
    set names are prefixed by their collection."""
    from scfm.tasks.gene_modules import GENE_SET_RESOURCES, load_gene_sets, read_gmt

    out: dict[str, list[str]] = {}
    for spec in specs:
        if spec in GENE_SET_RESOURCES:
            sets = load_gene_sets([spec])[spec]
        elif Path(spec).is_file():
            sets = read_gmt(spec)
        else:
            raise FileNotFoundError(
                f"gene sets {spec!r}: not a file and not one of {sorted(GENE_SET_RESOURCES)}"
            )
        out |= {f"{Path(spec).name}:{name}": genes for name, genes in sets.items()}
    return out


def canonical_gene_sets(gene_sets: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Members replaced by canonical keys (vocabulary names, else upper case)."""
    from scfm.tasks.perturb_data import canonical_keys

    genes = sorted({g for members in gene_sets.values() for g in members})
    keys, _ = canonical_keys(genes)
    key = dict(zip(genes, keys, strict=True))
    return {name: sorted({key[g] for g in members}) for name, members in gene_sets.items()}


@dataclass
class PerturbationGraphSource:
    """Where the perturbation graph comes from: gene sets (Jaccard) or a fixed edge list."""

    gene_sets: dict[str, list[str]] | None = None  # canonical members
    edge_list: GeneGraph | None = None  # canonical node names
    description: str = ""

    @property
    def genes(self) -> set[str]:
        """Every gene the source knows (perturbations of other genes cannot be placed)."""
        if self.edge_list is not None:
            return set(self.edge_list.nodes)
        return {g for members in (self.gene_sets or {}).values() for g in members}

    def graph(self, nodes: Sequence[str], *, k: int = 20, threshold: float = 0.1) -> GeneGraph:
        if self.edge_list is not None:
            return restrict(self.edge_list, nodes, k=k)
        return gene_set_graph(nodes, self.gene_sets or {}, k=k, threshold=threshold)


def graph_source(
    gene_sets: Sequence[str] = DEFAULT_GENE_SETS, edge_list: str | Path | None = None
) -> PerturbationGraphSource:
    """The perturbation-graph source of a run: an edge list when given, else gene sets."""
    from scfm.tasks.perturb_data import canonical_keys

    if edge_list is not None:
        g = read_edge_list(edge_list)
        keys, _ = canonical_keys(g.nodes)
        nodes = pd.Index(pd.unique(keys.astype(str)))  # aliases of one gene become one node
        remap = nodes.get_indexer(keys.astype(str))
        g = GeneGraph(list(nodes), remap[g.src], remap[g.dst], g.weight)
        return PerturbationGraphSource(edge_list=g, description=f"edge list {edge_list}")
    sets = canonical_gene_sets(load_gene_set_collections(gene_sets))
    return PerturbationGraphSource(
        gene_sets=sets, description=f"gene sets {', '.join(gene_sets)} ({len(sets)} sets)"
    )


def perturbation_graph(data, source: PerturbationGraphSource, cfg: GraphConfig) -> GeneGraph:
    """The perturbation graph of ``data`` (a :class:`~scfm.tasks.perturb_data.PerturbData`):
    nodes = its measured and perturbed genes that the source knows (GEARS without its default
    graph: the data's genes plus the perturbed genes)."""
    keys = {str(k) for k in data.gene_keys} | {k for ks in data.condition_keys for k in ks}
    return source.graph(sorted(keys & source.genes), k=cfg.pert_k, threshold=cfg.pert_threshold)
