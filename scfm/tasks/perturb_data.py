"""Perturb-seq data for perturbation-response prediction: conditions, pseudobulks, DE genes, splits.

    h5ad (raw counts; obs[perturbation_key] = control label, "GENE" or "GENE_A+GENE_B")
      │ validate counts (normalized input stops), parse labels, check every perturbation:
      │ genes in the vocabulary (and the perturbation graph), enough cells, control present
      ▼
    log1p(normalize_total 1e4) ──► per-condition mean expression (pseudobulk), change from control,
      │                            top-20 DE genes per perturbation (scanpy t-test vs control)
      ▼
    simulation split (GEARS): unseen perturbed genes held out; combinations by how many of their
    genes were seen (0 / 1 / 2); a validation set carved from training the same way

Any Perturb-seq AnnData in that form works (Norman, Adamson, Replogle, Papalexi). Norman-style
labels (``A+ctrl``, ``ctrl+A``, ``A+B``) are parsed: tokens equal to the control label or ``ctrl``
are dropped, genes are sorted, so ``A+ctrl`` and ``ctrl+A`` are one condition ``A``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

# Defaults of registered perturbation data sets (``--h5ad <name>``).
PRESETS: dict[str, dict[str, str]] = {
    "papalexi2021": {"perturbation_key": "grna_target", "control": "non-targeting"},
}
CONTROL_HINTS = ("ctrl", "control", "non-targeting", "nontargeting", "non_targeting", "safe")


class PerturbationError(ValueError):
    """The perturbation labels cannot be used as they are; the message names the fix."""


@dataclass(frozen=True)
class PerturbDataConfig:
    """Where the Perturb-seq data is and how its labels read."""

    h5ad: str  # a path or a registered resource (scfm data list), e.g. "papalexi2021"
    perturbation_key: str | None = None  # obs column; default: preset, else "condition"
    control: str | None = None  # control label; default: preset, else "ctrl"
    layer: str | None = None  # layer with raw counts ("raw" = adata.raw.X)
    separator: str = "+"  # joins the genes of a combination
    min_cells: int = 20  # perturbations with fewer cells are refused (or dropped)
    drop_invalid: bool = False  # drop unusable perturbations instead of stopping
    n_de_genes: int = 20
    target_sum: float = 1e4

    def resolved(self) -> tuple[str, str]:
        """``(perturbation_key, control)`` after the preset of a registered data set."""
        preset = PRESETS.get(self.h5ad, {})
        key = self.perturbation_key or preset.get("perturbation_key", "condition")
        return key, self.control or preset.get("control", "ctrl")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PerturbData:
    """A Perturb-seq experiment reduced to what perturbation models and metrics need.

    Attributes
    ----------
    counts, expr
        Cells × genes raw counts and ``log1p(normalize_total)`` values (CSR, float32).
    genes
        The file's gene ids (``var_names``), in column order.
    conditions
        Condition names; ``conditions[0]`` is the control. Others are canonical perturbations
        (genes sorted, joined by ``+``).
    condition_genes
        The perturbed genes of each condition (``()`` for the control).
    cell_condition
        Condition index of every cell.
    means
        ``(n_conditions, n_genes)`` mean ``expr`` per condition (pseudobulk).
    de_idx
        ``(n_conditions, n_de)`` gene indices of the top DE genes per condition (row 0 = -1).
    condition_keys
        Canonical keys of each condition's perturbed genes.
    gene_keys
        Canonical key of every gene (its vocabulary name, else the upper-cased id): how genes
        are matched to perturbed genes and gene sets.
    dropped
        Reason → perturbation labels dropped with ``drop_invalid``.
    """

    counts: sp.csr_matrix
    expr: sp.csr_matrix
    genes: np.ndarray
    conditions: list[str]
    condition_genes: list[tuple[str, ...]]
    condition_keys: list[tuple[str, ...]]  # canonical keys of the perturbed genes
    cell_condition: np.ndarray
    means: np.ndarray
    de_idx: np.ndarray
    gene_keys: np.ndarray
    vocab_index: np.ndarray  # vocabulary index per gene, -1 outside the vocabulary
    perturbation_key: str
    control: str
    source: str = ""
    n_missing_labels: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_cells(self) -> np.ndarray:
        return np.bincount(self.cell_condition, minlength=len(self.conditions))

    @property
    def control_mean(self) -> np.ndarray:
        return self.means[0]

    @property
    def change(self) -> np.ndarray:
        """Pseudobulk change from the control mean, ``(n_conditions, n_genes)``."""
        return self.means - self.means[0]

    @property
    def perturbations(self) -> list[str]:
        return self.conditions[1:]

    @property
    def has_combinations(self) -> bool:
        return any(len(g) > 1 for g in self.condition_genes)

    @property
    def nonzero(self) -> np.ndarray:
        """Genes with a nonzero mean per condition (GEARS restricts its loss to them)."""
        nz = self.means > 0
        nz[0] = True
        return nz

    def index(self, names: Sequence[str]) -> np.ndarray:
        pos = {c: i for i, c in enumerate(self.conditions)}
        return np.array([pos[n] for n in names], dtype=np.int64)

    def perturbed_genes(self) -> list[str]:
        return sorted({g for genes in self.condition_genes for g in genes})

    def summary(self) -> dict[str, Any]:
        n = self.n_cells
        return {
            "source": self.source,
            "perturbation_key": self.perturbation_key,
            "control": self.control,
            "n_cells": int(n.sum()),
            "n_genes": int(len(self.genes)),
            "n_genes_in_vocab": int((self.vocab_index >= 0).sum()),
            "n_control_cells": int(n[0]),
            "n_perturbations": len(self.conditions) - 1,
            "n_combinations": sum(len(g) > 1 for g in self.condition_genes),
            "n_missing_labels": self.n_missing_labels,
            "dropped": self.dropped,
        }


# ------------------------------------------------------------------------------------ labels
def parse_label(label: str, control: str, separator: str = "+") -> tuple[str, ...] | None:
    """The perturbed genes of a label, sorted; None for the control.

    ``"A+ctrl"`` → ``("A",)``, ``"B+A"`` → ``("A", "B")``, the control label → None.
    """
    label = str(label).strip()
    if label == control:
        return None
    tokens = [t.strip() for t in label.split(separator)]
    genes = sorted({t for t in tokens if t and t != control and t.lower() != "ctrl"})
    return tuple(genes)


def canonical_keys(names: Sequence[str], vocab=None) -> tuple[np.ndarray, np.ndarray]:
    """Each name's vocabulary name (aliases and Ensembl ids resolved), else its upper case;
    and the vocabulary index (-1 outside it)."""
    from scfm.data.genes import GeneVocab

    vocab = vocab or GeneVocab.load()
    mapping = vocab.map(list(names))
    keys = np.array(
        [
            vocab.names[i] if i >= 0 else str(n).upper()
            for n, i in zip(names, mapping.index, strict=True)
        ],
        dtype=object,
    )
    return keys, mapping.index.astype(np.int64)


def resolve_h5ad(spec: str) -> Path:
    """A registered resource name (``scfm data list``) or a path."""
    from scfm import datasets

    if spec in datasets.REGISTRY:
        return datasets.fetch(spec)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"{spec} is neither a file nor a registered data set (e.g. papalexi2021; "
            "see `scfm data list`)"
        )
    return path


# ------------------------------------------------------------------------------------ loading
def load_perturb_data(
    cfg: PerturbDataConfig, *, graph_genes: Collection[str] | None = None, adata=None
) -> PerturbData:
    """Read, validate and summarize a Perturb-seq AnnData (see the module docstring).

    Parameters
    ----------
    graph_genes
        Canonical gene keys of the perturbation graph; perturbations with other genes are
        refused (GEARS needs every perturbed gene in its graph).
    adata
        An AnnData in memory instead of ``cfg.h5ad`` (which then only names it).

    Raises
    ------
    PerturbationError
        Missing obs column or control label, perturbations with genes outside the vocabulary or
        the graph, or with fewer than ``cfg.min_cells`` cells (all listed, with the fix).
    InputValidationError
        The matrix is not raw counts (e.g. log-normalized).
    """
    from scfm.data.io import read_counts
    from scfm.data.validate import validate_anndata

    key, control = cfg.resolved()
    if cfg.min_cells < 2:
        raise ValueError("min_cells must be at least 2 (DE tests need two cells per group)")
    if adata is None:
        adata = read_counts(resolve_h5ad(cfg.h5ad), layer=cfg.layer)
    elif cfg.layer is not None:
        import anndata as ad

        adata = ad.AnnData(X=adata.layers[cfg.layer], obs=adata.obs, var=adata.var)
    if key not in adata.obs.columns:
        raise PerturbationError(
            f"perturbation column {key!r} is not in obs; obs columns are: "
            f"{', '.join(map(str, adata.obs.columns)) or 'none'} (pass --perturbation-key)"
        )
    validation = validate_anndata(adata)
    raw = adata.obs[key]
    missing = raw.isna().to_numpy() | raw.astype(str).str.strip().isin(["", "nan", "None"])
    labels = raw.astype(str).str.strip().to_numpy()
    if control not in set(labels[~missing]):
        counts = pd.Series(labels[~missing]).value_counts()
        hints = [c for c in counts.index if any(h in c.lower() for h in CONTROL_HINTS)]
        raise PerturbationError(
            f"control label {control!r} does not occur in obs[{key!r}]; "
            + (f"did you mean {', '.join(map(repr, hints[:3]))}? " if hints else "")
            + f"most common labels: {', '.join(map(repr, counts.index[:8]))} (pass --control-label)"
        )
    parsed = {lab: parse_label(lab, control, cfg.separator) for lab in pd.unique(labels[~missing])}
    keep, dropped = _check_perturbations(parsed, labels[~missing], cfg, control, key, graph_genes)
    cell_keep = ~missing & np.isin(labels, list(keep))
    names = {lab: _condition_name(parsed[lab], control, cfg.separator) for lab in keep}
    conditions = [control] + sorted({n for n in names.values() if n != control})
    cond_pos = {c: i for i, c in enumerate(conditions)}
    cell_condition = np.array([cond_pos[names[lab]] for lab in labels[cell_keep]], np.int64)
    genes_of = {names[lab]: parsed[lab] or () for lab in keep}
    condition_genes = [tuple(genes_of[c]) for c in conditions]
    perturbed = sorted({g for gs in condition_genes for g in gs})
    pkeys = dict(zip(perturbed, canonical_keys(perturbed)[0], strict=True)) if perturbed else {}
    condition_keys = [tuple(str(pkeys[g]) for g in gs) for gs in condition_genes]

    X = adata.X[np.flatnonzero(cell_keep)]
    counts = sp.csr_matrix(X, dtype=np.float32)
    counts.sort_indices()
    expr = log_normalize(counts, cfg.target_sum)
    means = condition_means(expr, cell_condition, len(conditions))
    gene_names = np.asarray(adata.var_names, dtype=str)
    de_idx = de_genes(expr, cell_condition, conditions, gene_names, cfg.n_de_genes)
    keys, vidx = canonical_keys(gene_names, validation.mapping.vocab)
    if missing.any():
        logger.warning("dropped %d cells without a perturbation label", int(missing.sum()))
    return PerturbData(
        counts=counts,
        expr=expr,
        genes=gene_names,
        conditions=conditions,
        condition_genes=condition_genes,
        condition_keys=condition_keys,
        cell_condition=cell_condition,
        means=means,
        de_idx=de_idx,
        gene_keys=keys,
        vocab_index=vidx,
        perturbation_key=key,
        control=control,
        source=str(cfg.h5ad),
        n_missing_labels=int(missing.sum()),
        dropped=dropped,
    )


def _condition_name(genes: tuple[str, ...] | None, control: str, sep: str) -> str:
    return control if genes is None else sep.join(genes)


def _check_perturbations(
    parsed: Mapping[str, tuple[str, ...] | None],
    labels: np.ndarray,
    cfg: PerturbDataConfig,
    control: str,
    key: str,
    graph_genes: Collection[str] | None,
) -> tuple[set[str], dict[str, list[str]]]:
    """Labels to keep, and reason → dropped labels; raises unless ``cfg.drop_invalid``."""
    genes = sorted({g for gs in parsed.values() if gs for g in gs})
    gkeys, gidx = canonical_keys(genes) if genes else (np.array([]), np.array([]))
    gene_key = dict(zip(genes, gkeys, strict=True))
    not_vocab = {g for g, i in zip(genes, gidx, strict=True) if i < 0}
    graph = {str(g) for g in graph_genes} if graph_genes is not None else None
    # cells per condition: "A+ctrl" and "ctrl+A" are one condition
    name = {lab: _condition_name(gs, control, cfg.separator) for lab, gs in parsed.items()}
    per_condition = pd.Series([name[lab] for lab in labels]).value_counts()
    n_cells = {lab: int(per_condition[name[lab]]) for lab in parsed}
    problems: dict[str, dict[str, str]] = {"empty": {}, "vocab": {}, "graph": {}, "cells": {}}
    for lab, gs in parsed.items():
        if gs is None:
            continue
        if not gs:
            problems["empty"][lab] = "names no gene"
            continue
        bad = [g for g in gs if g in not_vocab]
        if bad:
            problems["vocab"][lab] = ", ".join(bad)
        elif graph is not None and any(gene_key[g] not in graph for g in gs):
            problems["graph"][lab] = ", ".join(g for g in gs if gene_key[g] not in graph)
        if n_cells[lab] < cfg.min_cells:
            problems["cells"][lab] = f"{n_cells[lab]} cells"
    if n_cells[control] < cfg.min_cells:
        raise PerturbationError(
            f"only {n_cells[control]} control cells ({control!r}); at least "
            f"{cfg.min_cells} are needed (lower --min-cells only if you accept noisy means)"
        )
    bad_labels = {lab for p in problems.values() for lab in p}
    if bad_labels and not cfg.drop_invalid:
        raise PerturbationError(_problem_message(problems, key, cfg.min_cells, len(bad_labels)))
    dropped = {reason: sorted(p) for reason, p in problems.items() if p}
    if bad_labels:
        logger.warning(
            "dropped %d perturbations:\n%s",
            len(bad_labels),
            _problem_message(problems, key, cfg.min_cells, 0),
        )
    keep = {lab for lab in parsed if lab not in bad_labels}
    if len(keep) < 4:
        raise PerturbationError(
            f"only {len(keep) - 1} usable perturbations remain in obs[{key!r}]; a held-out "
            "evaluation needs at least 3"
        )
    return keep, dropped


_REASONS = {  # reason → (what is wrong, how to fix it)
    "empty": ("labels that name no gene", "fix the labels (genes joined by the separator)"),
    "vocab": (
        "genes outside the 19,264-gene vocabulary",
        "use HGNC symbols or Ensembl ids (a typo, an old symbol, not a gene?)",
    ),
    "graph": (
        "genes not in the perturbation graph",
        "add gene sets or an edge list that contain them (--gene-sets / --pert-graph)",
    ),
    "cells": ("fewer than {min_cells} cells", "lower --min-cells (noisier means) or add cells"),
}


def _problem_message(problems: dict[str, dict[str, str]], key: str, min_cells: int, n: int) -> str:
    lines = [f"{n} perturbations in obs[{key!r}] cannot be used:"] if n else []
    for reason, items in problems.items():
        if not items:
            continue
        what, fix = _REASONS[reason]
        listed = "; ".join(f"{lab} ({v})" for lab, v in sorted(items.items()))
        lines.append(f"  - {what.format(min_cells=min_cells)}: {listed} — fix: {fix}")
    if n:
        lines.append("or pass --drop-invalid (drop_invalid=True) to drop these perturbations")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ pre-processing
def log_normalize(counts: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(counts / total · target_sum)`` per cell (cells with zero counts stay zero)."""
    X = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X.data *= np.repeat(scale, np.diff(X.indptr)).astype(np.float32)
    np.log1p(X.data, out=X.data)
    return X


def condition_means(expr: sp.csr_matrix, cell_condition: np.ndarray, n: int) -> np.ndarray:
    """``(n, genes)`` float64 mean of ``expr`` over each condition's cells."""
    counts = np.bincount(cell_condition, minlength=n).astype(np.float64)
    onehot = sp.csr_matrix(
        (np.ones(cell_condition.size), (cell_condition, np.arange(cell_condition.size))),
        shape=(n, cell_condition.size),
    )
    sums = np.asarray((onehot @ expr.astype(np.float64)).todense())
    return sums / np.maximum(counts, 1)[:, None]


def de_genes(
    expr: sp.csr_matrix,
    cell_condition: np.ndarray,
    conditions: Sequence[str],
    genes: np.ndarray,
    n_de: int = 20,
) -> np.ndarray:
    """Top ``n_de`` genes of every perturbation vs the control, as GEARS ranks them.

    scanpy ``rank_genes_groups`` (Welch t-test, ``rankby_abs=True``) of each condition against
    ``conditions[0]`` on the log-normalized values, over all cells (GEARS computes them on the full
    data: an evaluation device, not training information). Row 0 (control) is -1.
    """
    import anndata as ad
    import scanpy as sc

    n_de = min(n_de, len(genes))
    labels = np.asarray(conditions, dtype=object)[cell_condition]
    adata = ad.AnnData(
        X=expr,
        obs=pd.DataFrame(
            {"condition": pd.Categorical(labels, categories=list(conditions))},
            index=pd.Index(np.arange(len(labels)).astype(str)),
        ),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    adata.uns["log1p"] = {"base": None}
    with warnings.catch_warnings(), _torch_threads_kept():
        # scanpy fills its result frame column by column (pandas PerformanceWarning)
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            adata,
            groupby="condition",
            reference=conditions[0],
            method="t-test",
            rankby_abs=True,
            n_genes=len(genes),
            use_raw=False,
        )
    names = adata.uns["rank_genes_groups"]["names"]
    pos = pd.Index(genes)
    out = np.full((len(conditions), n_de), -1, dtype=np.int64)
    for i, cond in enumerate(conditions[1:], start=1):
        out[i] = pos.get_indexer(list(names[cond][:n_de]))
    return out


@contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """scanpy's numba kernels reset the OpenMP thread count that torch shares: put it back
    (on a busy 2-core box, GEARS training then ran 10× slower)."""
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)


# ---------------------------------------------------------------------------------- splits
@dataclass
class PerturbSplit:
    """Perturbations (condition names) of each split; the control is always in training.

    ``subgroup`` names the kind of every test perturbation: ``unseen_single``, ``combo_seen0``,
    ``combo_seen1`` (one of its genes seen in training) or ``combo_seen2``.
    """

    seed: int
    train: list[str]
    val: list[str]
    test: list[str]
    subgroup: dict[str, str]
    train_genes: list[str]

    @property
    def fit(self) -> list[str]:
        """Training plus validation perturbations (methods without model selection fit on all)."""
        return self.train + self.val

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def simulation_split(
    condition_genes: Mapping[str, Sequence[str]],
    seed: int = 1,
    *,
    train_gene_set_size: float = 0.75,
    combo_seen2_train_frac: float = 0.75,
    val_gene_set_size: float = 0.9,
    val_combo_seen2_train_frac: float = 0.9,
) -> PerturbSplit:
    """GEARS' ``simulation`` split of perturbations (``DataSplitter.get_simulation_split``).

    A fraction ``train_gene_set_size`` of the perturbed genes is drawn as training genes; singles
    of the others are test perturbations (unseen_single), combinations with one or no seen gene
    are test (combo_seen1 / combo_seen0), and of the combinations with both genes seen a fraction
    ``combo_seen2_train_frac`` trains, the rest tests (combo_seen2). The validation set is carved
    from the training perturbations by the same procedure. Draws use ``RandomState(seed)``
    re-seeded for each of the two splits, in GEARS' order.

    Parameters
    ----------
    condition_genes
        Perturbation name → its genes (the control excluded).
    """
    perts = sorted(condition_genes)
    train, test, sub, train_genes = _simulation(
        perts, condition_genes, train_gene_set_size, combo_seen2_train_frac, seed
    )
    train_only, val, _, _ = _simulation(
        train, condition_genes, val_gene_set_size, val_combo_seen2_train_frac, seed
    )
    if not val or not test or not train_only:
        raise PerturbationError(
            f"{len(perts)} perturbations give {len(train_only)} training, {len(val)} validation "
            f"and {len(test)} test perturbations with seed {seed}: every split needs one; use "
            "data with more perturbed genes"
        )
    return PerturbSplit(seed, sorted(train_only), sorted(val), sorted(test), sub, train_genes)


def _simulation(
    perts: list[str],
    genes_of: Mapping[str, Sequence[str]],
    size: float,
    combo_frac: float,
    seed: int,
) -> tuple[list[str], list[str], dict[str, str], list[str]]:
    rng = np.random.RandomState(seed)
    unique_genes = np.unique([g for p in perts for g in genes_of[p]])
    train_genes = rng.choice(unique_genes, int(len(unique_genes) * size), replace=False)
    seen = set(train_genes.tolist())
    singles = [p for p in perts if len(genes_of[p]) == 1]
    combos = [p for p in perts if len(genes_of[p]) > 1]
    n_seen = {p: sum(g in seen for g in genes_of[p]) for p in combos}
    train = [p for p in singles if genes_of[p][0] in seen]
    combo_seen1 = [p for p in combos if n_seen[p] == 1]
    both = np.array(sorted(p for p in combos if n_seen[p] == len(genes_of[p])), dtype=object)
    combo_train = rng.choice(both, int(len(both) * combo_frac), replace=False).tolist()
    combo_seen2 = sorted(set(both.tolist()) - set(combo_train))
    train += combo_train
    unseen_single = [p for p in singles if genes_of[p][0] not in seen]
    combo_seen0 = [p for p in combos if n_seen[p] == 0]
    sub = (
        {p: "unseen_single" for p in unseen_single}
        | {p: "combo_seen0" for p in combo_seen0}
        | {p: "combo_seen1" for p in combo_seen1}
        | {p: "combo_seen2" for p in combo_seen2}
    )
    # combinations of more than two genes with some but not all seen count as combo_seen1
    rest = [p for p in combos if 0 < n_seen[p] < len(genes_of[p]) and p not in sub]
    sub |= {p: "combo_seen1" for p in rest}
    return train, sorted(sub), sub, sorted(seen)
