"""SCAD data: labelled bulk cell lines (source), single cells (target), and the proxy target.

    response table (GDSC1 by default) ──► rows of one drug (normalized name; close names suggested)
      │ repeated (cell line, drug) rows averaged; lines without expression counted
      │ ln IC50 binarized per drug by a LabelRule — ``threshold`` (GDSC binarization thresholds)
      │ or ``zscore`` — or the user's own labels table (cell_line, label)
      ▼
    SourceData: cell lines, labels (1 sensitive, 0 resistant), ln IC50, expression
    AnnData of single cells (raw counts) ──validate, map genes──► TargetData (labels optional)
      │ gene overlap with the source checked (check_gene_overlap)
    proxy target (make_proxy_target): held-out source lines → pseudo single cells → AnnData

**Label rules.** ``threshold`` (default): a line is *sensitive* when its ln IC50 is below the
drug's threshold in the ``gdsc_ic50_thresholds`` resource — the per-drug ln IC50 cut-offs DeepCDR
ships for its binary task, from the GDSC1000 binarization (Iorio et al. 2016), the source of
SCAD's own sensitive / resistant calls. They mark the sensitive tail (6–8 % of lines for the
paper's four drugs), so the classes are imbalanced; the shared data has no max-concentration
column, so the "IC50 above the highest screened concentration" rule is not available.
``zscore``: sensitive when ``(ln IC50 − mean) / SD`` over the drug's lines is below ``-z_cut``
(default 0.5: about 30 %), for drugs without a threshold or a custom response table.

**Proxy target.** No labelled single-cell drug-response set is available offline, so the tests and
the benchmark use pseudo single cells of *held-out* cell lines: each line's positive profile (bulk
values, or ``2^(scale·z)`` of the z-scored GDSC matrix — :func:`~scfm.tasks.drug_data.model_input`)
times per-cell gamma noise, normalized to proportions, sampled as multinomial UMI counts at
log-uniform depths of 1,000–5,000, labelled with the line's call. The held-out lines are removed
from the source (no leakage). It is written as an AnnData of raw counts with gene symbols and goes
through the same code as a user's data. What it does not test: real single-cell biology (dropout
structure, cell states, cell cycle), batch effects between platforms beyond sampling depth and
noise, and cell-level (rather than line-level) response differences.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.tasks.drug_data import (
    DEFAULT_ZSCORE_SCALE,
    N_EXAMPLES,
    CellLineExpression,
    DrugDataError,
    ExpressionKind,
    expression_from,
    feature_matrix,
    model_input,
    normalize_name,
    read_named_response,
    read_table,
    top_variance_genes,
)

logger = logging.getLogger(__name__)

MIN_PER_CLASS = 10  # labelled source lines of each class a drug needs
MIN_SHARED_GENES = 50
MIN_GENE_OVERLAP = 0.5  # shared genes / genes of the smaller (vocabulary-mapped) gene set
SENSITIVE, RESISTANT = "sensitive", "resistant"
CLASSES = [RESISTANT, SENSITIVE]  # class index 1 = sensitive
LABEL_VALUES = {
    **{v: 1.0 for v in ("sensitive", "s", "1", "1.0", "true", "yes")},
    **{v: 0.0 for v in ("resistant", "r", "0", "0.0", "false", "no")},
}
PROXY_LABEL_KEY, PROXY_GROUP_KEY = "response", "cell_line"


class ScadDataError(DrugDataError):
    """A SCAD input cannot be used (too few labelled lines, unmatched genes, no target labels);
    the message names the fix."""


# ------------------------------------------------------------------------------ labels
@dataclass(frozen=True)
class LabelRule:
    """How a drug's ln IC50 values become sensitive (1) / resistant (0) calls."""

    rule: Literal["threshold", "zscore"] = "threshold"
    z_cut: float = 0.5  # zscore: sensitive when z < -z_cut
    threshold: float | None = None  # threshold: a fixed ln IC50 cut instead of the GDSC table's

    def describe(self, drug_threshold: float | None = None) -> str:
        if self.rule == "zscore":
            return f"zscore: sensitive when the per-drug z-score of ln IC50 < -{self.z_cut:g}"
        source = "given" if self.threshold is not None else "GDSC binarization threshold"
        cut = f" {drug_threshold:.3f}" if drug_threshold is not None else ""
        return f"threshold: sensitive when ln IC50 <{cut} ({source})"


def gdsc_thresholds() -> dict[str, float]:
    """Drug key → ln IC50 threshold from the ``gdsc_ic50_thresholds`` resource. Entries such as
    ``PLX4720 (rescreen)`` name a second screen of a drug: the plain entry's value wins."""
    from scfm import datasets

    names, values = datasets.fetch("gdsc_ic50_thresholds").read_text().splitlines()[:2]
    out: dict[str, float] = {}
    pairs = list(zip(names.split("\t"), values.split("\t"), strict=True))
    for plain_first in (True, False):
        for name, value in pairs:
            if ("(" not in name) == plain_first:
                out.setdefault(normalize_name(name.split("(")[0]), float(value))
    return out


def binarize(ln_ic50: np.ndarray, drug_key: str, rule: LabelRule) -> tuple[np.ndarray, float]:
    """Labels (1 sensitive, 0 resistant) and the ln IC50 cut used (per-drug for ``zscore``)."""
    y = np.asarray(ln_ic50, dtype=np.float64)
    if rule.rule == "zscore":
        sd = y.std()
        if not np.isfinite(sd) or sd == 0:
            raise ScadDataError("ln IC50 is constant over the drug's lines: no z-score rule")
        cut = float(y.mean() - rule.z_cut * sd)
    elif rule.rule == "threshold":
        if rule.threshold is not None:
            cut = float(rule.threshold)
        else:
            table = gdsc_thresholds()
            if drug_key not in table:
                raise ScadDataError(
                    f"no GDSC binarization threshold for drug {drug_key!r} (the table covers "
                    f"{len(table)} GDSC1 drugs): use the zscore rule (--label-rule zscore) or give "
                    "a threshold (--threshold, ln IC50 in µM)"
                )
            cut = table[drug_key]
    else:
        raise ScadDataError(f"label rule must be 'threshold' or 'zscore', got {rule.rule!r}")
    return (y < cut).astype(np.int64), cut


def parse_labels(values: Sequence[Any] | pd.Series, what: str) -> np.ndarray:
    """``sensitive`` / ``resistant`` (also S/R, 1/0, true/false) → 1.0 / 0.0; missing → NaN.

    Raises
    ------
    ScadDataError
        Any other value (the message lists them).
    """
    s = pd.Series(values, dtype=object)
    missing = s.isna().to_numpy()
    text = s.astype(str).str.strip().str.lower()
    out = text.map(LABEL_VALUES).to_numpy(dtype=np.float64)
    bad = sorted(set(text[~missing & np.isnan(out)]))
    if bad:
        raise ScadDataError(
            f"{what} holds values that are neither sensitive nor resistant: "
            f"{', '.join(map(repr, bad[:N_EXAMPLES]))}; use sensitive / resistant (or 1 / 0), "
            "empty for unlabelled cells"
        )
    out[missing] = np.nan
    return out


def check_classes(labels: np.ndarray, what: str, min_per_class: int, fix: str) -> None:
    """Stop unless ``labels`` hold at least ``min_per_class`` of each class."""
    y = np.asarray(labels, dtype=np.float64)
    n_s, n_r = int((y == 1).sum()), int((y == 0).sum())
    if min(n_s, n_r) < min_per_class:
        raise ScadDataError(
            f"{what} has {n_s} sensitive and {n_r} resistant labelled lines; SCAD needs at least "
            f"{min_per_class} of each to train and validate a classifier: {fix}"
        )


# ------------------------------------------------------------------------------ source
@dataclass
class SourceData:
    """Labelled bulk cell lines of one drug. ``expression`` rows follow ``cell_lines``."""

    drug: str
    dataset: str
    cell_lines: list[str]
    labels: np.ndarray  # (n,) int64: 1 sensitive, 0 resistant
    ln_ic50: np.ndarray  # (n,) float64, NaN when the labels were given directly
    expression: CellLineExpression
    rule: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_sensitive(self) -> int:
        return int((self.labels == 1).sum())

    @property
    def n_resistant(self) -> int:
        return int((self.labels == 0).sum())

    def subset(self, rows: np.ndarray) -> SourceData:
        """The lines at ``rows`` (indices or a boolean mask)."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows
        lines = [self.cell_lines[i] for i in idx]
        return SourceData(
            self.drug,
            self.dataset,
            lines,
            self.labels[idx],
            self.ln_ic50[idx],
            self.expression.subset(lines),
            self.rule,
            self.report,
        )

    def summary(self) -> str:
        return (
            f"{self.drug} ({self.dataset}): {len(self.cell_lines)} cell lines with expression, "
            f"{self.n_sensitive} sensitive / {self.n_resistant} resistant ({self.rule})"
        )


def _find_drug(rows: pd.DataFrame, drug: str, dataset: str) -> pd.DataFrame:
    key = normalize_name(drug)
    hit = rows[rows["drug_key"] == key]
    if len(hit):
        return hit
    names = rows.drop_duplicates("drug_key").set_index("drug_key")["drug_name"]
    close = difflib.get_close_matches(key, names.index, n=5, cutoff=0.6)
    close += [k for k in names.index if len(key) >= 4 and (key in k or k in key)]
    close = list(dict.fromkeys(close))
    hint = f"; close names: {', '.join(names[k] for k in close)}" if close else ""
    raise ScadDataError(
        f"drug {drug!r} is not in the {dataset} response table ({len(names)} drugs){hint}. "
        "Names are matched ignoring case and punctuation; check the name or choose another "
        "data set (--dataset GDSC1 | GDSC2 | CCLE)"
    )


def read_label_table(table: pd.DataFrame | str | Path, drug: str) -> pd.DataFrame:
    """A user's own bulk labels: columns ``cell_line``, ``label`` (sensitive / resistant, 1 / 0)
    and, optionally, ``drug`` (then only ``drug``'s rows are used)."""
    df = table if isinstance(table, pd.DataFrame) else read_table(table)
    missing = {"cell_line", "label"} - set(df.columns)
    if missing:
        raise ScadDataError(
            f"the labels table needs columns cell_line and label (has "
            f"{', '.join(map(str, df.columns))})"
        )
    if "drug" in df.columns:
        df = df[df["drug"].map(normalize_name) == normalize_name(drug)]
        if df.empty:
            raise ScadDataError(f"the labels table has no row for drug {drug!r}")
    y = parse_labels(df["label"], "the labels table's label column")
    out = pd.DataFrame({"cell_key": df["cell_line"].map(normalize_name).to_numpy(), "label": y})
    out = out.dropna().groupby("cell_key", sort=True)["label"].agg(["mean", "size"])
    conflicting = out.index[(out["mean"] > 0) & (out["mean"] < 1)].tolist()
    if conflicting:
        raise ScadDataError(
            f"{len(conflicting)} cell lines have both labels (e.g. "
            f"{', '.join(conflicting[:N_EXAMPLES])}): keep one row per line"
        )
    return pd.DataFrame({"cell_key": out.index, "label": out["mean"].astype(np.int64).to_numpy()})


@lru_cache(maxsize=4)
def _named_response(dataset: str) -> tuple[pd.DataFrame, int]:
    """A shared response table, read once per process (only filtered, never modified)."""
    return read_named_response(dataset)


def load_source(
    drug: str,
    dataset: str = "GDSC1",
    *,
    response: pd.DataFrame | str | Path | None = None,
    cell_col: str | None = None,
    drug_col: str | None = None,
    value_col: str | None = None,
    value: Literal["ln_ic50", "ic50_um"] | None = None,
    labels: pd.DataFrame | str | Path | None = None,
    expression: pd.DataFrame | Any | str | Path | None = None,
    expression_kind: ExpressionKind = "auto",
    rule: LabelRule | None = None,
    min_per_class: int = MIN_PER_CLASS,
    max_genes: int | None = None,
) -> SourceData:
    """Labelled source cell lines of one drug.

    Parameters
    ----------
    drug
        Drug name as in the response table (case and punctuation ignored: ``PLX4720`` finds
        ``PLX-4720``).
    dataset, response, cell_col, drug_col, value_col, value
        The response table (see :func:`~scfm.tasks.drug_data.read_named_response`). GDSC1 is the
        default: it holds all four of the paper's drugs (GDSC2 only sorafenib and PLX-4720).
    labels
        The user's own labels instead of binarized IC50s (:func:`read_label_table`).
    expression, expression_kind
        Cell lines × genes (:func:`~scfm.tasks.drug_data.expression_from`; default: the shared
        GDSC z-scores), or a loaded :class:`~scfm.tasks.drug_data.CellLineExpression`.
    rule
        :class:`LabelRule` (default: the GDSC thresholds).
    min_per_class
        Fewest lines of each class accepted.
    max_genes
        Keep the genes with the largest variance over *all* expression lines (independent of the
        drug, so embeddings can be shared between drugs; unsupervised).

    Raises
    ------
    ScadDataError
        Unknown drug (close names listed), no threshold, too few lines of a class.
    """
    rule = rule or LabelRule()
    expr = (
        expression
        if isinstance(expression, CellLineExpression)
        else expression_from(expression, kind=expression_kind)
    )
    if max_genes is not None:
        expr = top_variance_genes(expr, max_genes)
    report: dict[str, Any] = {"expression": expr.source, "expression_kind": expr.kind}
    if labels is not None:
        table = read_label_table(labels, drug)
        values = np.full(len(table), np.nan)
        name, source_name = drug, "labels table"
        rule_text = "labels given by the user"
    else:
        if response is None:
            rows, n_missing = _named_response(dataset)
        else:
            rows, n_missing = read_named_response(
                dataset,
                response,
                cell_col=cell_col,
                drug_col=drug_col,
                value_col=value_col,
                value=value,
            )
        hit = _find_drug(rows, drug, dataset if response is None else "given")
        name = str(hit["drug_name"].iloc[0])
        per_line = hit.groupby("cell_key", sort=True)["y"].agg(["mean", "size"])
        report |= {
            "n_rows": int(len(hit)),
            "n_rows_missing_value": int(n_missing),
            "n_repeated_rows": int(len(hit) - len(per_line)),
        }
        table = pd.DataFrame({"cell_key": per_line.index, "y": per_line["mean"].to_numpy()})
        values = table["y"].to_numpy()
        source_name = dataset if response is None else str(response)
    has_expr = table["cell_key"].isin(expr.values.index).to_numpy()
    report |= {
        "n_lines_labelled": int(len(table)),
        "n_lines_without_expression": int((~has_expr).sum()),
        "lines_without_expression": table["cell_key"][~has_expr].tolist()[:N_EXAMPLES],
    }
    table, values = table[has_expr], values[has_expr]
    if labels is not None:
        y = table["label"].to_numpy(np.int64)
    else:
        y, cut = binarize(values, normalize_name(drug), rule)
        rule_text = rule.describe(cut if rule.rule == "threshold" else None)
        if rule.rule == "zscore":
            rule_text += f" (ln IC50 < {cut:.3f})"
        report["ln_ic50_cut"] = cut
    lines = table["cell_key"].tolist()
    source = SourceData(name, source_name, lines, y, values, expr.subset(lines), rule_text, report)
    check_classes(
        y,
        f"drug {name!r} ({source_name}, {rule_text})",
        min_per_class,
        "choose a drug with more labelled lines, another rule (--label-rule zscore labels about "
        "30 % sensitive) or a larger response table; --min-per-class lowers the limit",
    )
    logger.info("source %s", source.summary())
    return source


# ------------------------------------------------------------------------------ target
@dataclass
class TargetData:
    """Single cells with optional labels (1 / 0 / NaN). ``adata`` is the caller's object
    (predictions are written into it); the raw counts are ``X`` (``adata.X`` or ``layer``)."""

    adata: Any  # AnnData
    X: Any  # raw counts, cells × genes (the matrix of ``layer``)
    layer: str | None
    mapping: Any  # scfm.data.genes.GeneMapping of the genes of X
    labels: np.ndarray | None
    groups: np.ndarray  # per-cell group for the prediction distributions (e.g. cell line)
    name: str
    proxy: dict[str, Any] | None = None  # what the proxy is, when it is one

    @property
    def n_cells(self) -> int:
        return int(self.adata.n_obs)

    @property
    def labelled(self) -> np.ndarray:
        """Mask of cells with a label."""
        if self.labels is None:
            return np.zeros(self.n_cells, dtype=bool)
        return ~np.isnan(self.labels)

    def require_labels(self, purpose: str = "evaluation") -> np.ndarray:
        """The labels, or a clear stop when the target has none of both classes."""
        if self.labels is None:
            raise ScadDataError(
                f"{purpose} needs labelled target cells, and {self.name} has none: pass "
                "--label-key with the obs column holding sensitive / resistant per cell (or "
                "use `scfm predict scad` to score unlabelled cells)"
            )
        y = self.labels[self.labelled]
        if not ((y == 1).any() and (y == 0).any()):
            raise ScadDataError(
                f"{purpose} needs sensitive and resistant target cells; {self.name} has "
                f"{int((y == 1).sum())} sensitive and {int((y == 0).sum())} resistant"
            )
        return self.labels


def target_from_anndata(
    adata,
    *,
    layer: str | None = None,
    label_key: str | None = None,
    group_key: str | None = None,
    name: str | None = None,
) -> TargetData:
    """Validate a single-cell AnnData (raw counts; any gene ids) as a SCAD target.

    Parameters
    ----------
    adata
        An AnnData or a path (``.h5ad``, 10x).
    layer
        Where the raw counts are (see :func:`scfm.data.validate.layer_matrix`).
    label_key
        obs column with sensitive / resistant per cell (needed for evaluation, not for training
        or prediction); empty values are unlabelled cells.
    group_key
        obs column whose groups the prediction plots show (default: ``label_key``).
    """
    from scfm.data.io import read_counts
    from scfm.data.validate import layer_matrix, validate_anndata

    if isinstance(adata, str | Path):
        name = name or Path(adata).name
        adata = read_counts(adata, layer=layer)
        layer = None
    checked = validate_anndata(adata, layer=layer)
    X, _ = layer_matrix(adata, layer)
    for key, what in ((label_key, "label"), (group_key, "group")):
        if key is not None and key not in adata.obs.columns:
            raise ScadDataError(
                f"{what} column {key!r} is not in obs; obs columns are: "
                f"{', '.join(map(str, adata.obs.columns)) or 'none'}"
            )
    labels = None
    if label_key is not None:
        labels = parse_labels(adata.obs[label_key], f"obs[{label_key!r}]")
    key = group_key or label_key
    groups = (
        adata.obs[key].astype(str).to_numpy(dtype=object)
        if key is not None
        else np.full(adata.n_obs, "all cells", dtype=object)
    )
    proxy = adata.uns.get("scad_proxy")
    return TargetData(
        adata,
        X,
        layer,
        checked.mapping,
        labels,
        groups,
        name or "target cells",
        dict(proxy) if proxy is not None else None,
    )


def source_vocab_index(genes: Sequence[str]) -> np.ndarray:
    """Vocabulary index of each source gene, -1 where unmapped or a repeat of an earlier gene."""
    from scfm.data.genes import GeneVocab, gene_mapping

    idx = gene_mapping(GeneVocab.load(), list(genes)).index.copy()
    _, first = np.unique(idx, return_index=True)
    repeat = np.ones(idx.size, dtype=bool)
    repeat[first] = False
    idx[repeat] = -1
    return idx


def check_gene_overlap(
    source_genes: Sequence[str],
    target: TargetData,
    *,
    min_fraction: float = MIN_GENE_OVERLAP,
    min_genes: int = MIN_SHARED_GENES,
) -> np.ndarray:
    """Vocabulary indices shared by the source genes and the target's genes (sorted).

    Raises
    ------
    ScadDataError
        Fewer than ``min_genes`` shared, or fewer than ``min_fraction`` of the smaller gene set.
    """
    src = source_vocab_index(source_genes)
    src = np.unique(src[src >= 0])
    tgt = np.unique(target.mapping.index[target.mapping.mapped])
    shared = np.intersect1d(src, tgt)
    smaller = max(min(src.size, tgt.size), 1)
    if shared.size < min_genes or shared.size < min_fraction * smaller:
        names = np.asarray(target.mapping.genes, dtype=object)
        outside = names[~np.isin(target.mapping.index, shared)][:N_EXAMPLES]
        raise ScadDataError(
            f"the target cells ({target.name}) share only {shared.size} genes with the "
            f"{src.size:,} source genes ({shared.size / smaller:.0%} of the smaller set; need at "
            f"least {min_genes} and {min_fraction:.0%}); target genes not in the source, e.g. "
            f"{', '.join(map(str, outside))}. Target genes must be human symbols or Ensembl ids "
            "of the same genes as the bulk data; for a small gene panel lower --min-gene-overlap"
        )
    logger.info(
        "%d genes shared by the %d source and %d target genes", shared.size, src.size, tgt.size
    )
    return shared


# ------------------------------------------------------------------------------ features
def source_expression_features(source: SourceData, genes: np.ndarray) -> np.ndarray:
    """The raw-expression branch's source input on vocabulary genes ``genes`` (z-scores as
    given, bulk values log-normalized), ``(n_lines, len(genes))``."""
    idx = source_vocab_index(source.expression.values.columns)
    col = {int(v): i for i, v in enumerate(idx) if v >= 0}
    missing = [int(g) for g in genes if int(g) not in col]
    if missing:
        raise ScadDataError(f"{len(missing)} requested genes are not in the source expression")
    return feature_matrix(source.expression)[:, [col[int(g)] for g in genes]]


def cell_expression_features(
    X, mapping, genes: np.ndarray, kind: Literal["zscore", "bulk"]
) -> np.ndarray:
    """Single cells on the source's vocabulary genes, transformed like the source: log1p of
    counts per 10,000 (totals over every input gene), then — for a z-scored source — z-scored
    within each cell over the genes it has. Genes the cells lack are NaN ``(n_cells, G)``."""
    V = mapping.apply(X)  # (n, 19,264) CSR, collisions summed
    totals = np.asarray(sp.csr_matrix(X).sum(axis=1)).ravel().astype(np.float64)
    present = np.isin(genes, mapping.index[mapping.mapped])
    cols = V[:, genes].toarray().astype(np.float64)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    out = np.log1p(cols * scale[:, None])
    if kind == "zscore":
        sub = out[:, present]
        mean = sub.mean(axis=1, keepdims=True)
        sd = sub.std(axis=1, keepdims=True)
        out[:, present] = (sub - mean) / np.where(sd > 0, sd, 1.0)
    out[:, ~present] = np.nan
    return out.astype(np.float32)


# ------------------------------------------------------------------------------ splits
def stratified_split(
    labels: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first part, held-out part) with ``test_size`` of each class held out (at least
    one per class present); NaN labels always go to the first part."""
    if not 0 < test_size < 1:
        raise ScadDataError(f"a held-out fraction must be between 0 and 1, got {test_size}")
    y = np.asarray(labels, dtype=np.float64)
    rng = np.random.default_rng(seed)
    held = []
    for c in (0.0, 1.0):
        idx = rng.permutation(np.flatnonzero(y == c))
        if idx.size:
            held.append(idx[: max(1, int(round(test_size * idx.size)))])
    test = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(y.size), test)
    return keep, test


# ------------------------------------------------------------------------------ proxy target
@dataclass(frozen=True)
class ProxyConfig:
    """Pseudo single cells of held-out cell lines (see the module docstring)."""

    n_sensitive_lines: int = 5
    n_resistant_lines: int = 5
    cells_per_line: int = 40
    min_depth: int = 1000  # UMIs per cell, drawn log-uniformly between min and max
    max_depth: int = 5000
    cell_noise: float = 10.0  # gamma shape of per-cell, per-gene noise (CV 1/√shape); 0 = none
    zscore_scale: float = DEFAULT_ZSCORE_SCALE
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_proxy_target(
    source: SourceData, cfg: ProxyConfig, *, min_per_class: int = MIN_PER_CLASS
) -> tuple[SourceData, TargetData]:
    """Hold out lines of each class, sample their pseudo single cells, and return the remaining
    source and the target (an AnnData of raw counts through :func:`target_from_anndata`)."""
    import anndata as ad

    if cfg.min_depth < 1 or cfg.max_depth < cfg.min_depth or cfg.cells_per_line < 1:
        raise ScadDataError(
            f"proxy depths must satisfy 1 <= min_depth <= max_depth and cells_per_line >= 1 (got "
            f"{cfg.min_depth}, {cfg.max_depth}, {cfg.cells_per_line})"
        )
    rng = np.random.default_rng(cfg.seed)
    held = []
    for c, n in ((1, cfg.n_sensitive_lines), (0, cfg.n_resistant_lines)):
        idx = np.flatnonzero(source.labels == c)
        if n < 1 or idx.size - n < min_per_class:
            raise ScadDataError(
                f"drug {source.drug!r} has {idx.size} {CLASSES[c]} lines: holding out {n} for the "
                f"proxy target leaves fewer than {min_per_class} for training; hold out fewer "
                "lines (--proxy-lines) or use the zscore rule"
            )
        held.append(rng.choice(idx, size=n, replace=False))
    held_idx = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(source.cell_lines)), held_idx)
    held_src = source.subset(held_idx)
    profile = model_input(held_src.expression, zscore_scale=cfg.zscore_scale).X.astype(np.float64)
    n = cfg.cells_per_line
    line = np.repeat(np.arange(held_idx.size), n)
    depth = np.exp(rng.uniform(np.log(cfg.min_depth), np.log(cfg.max_depth), size=line.size))
    depth = np.rint(depth).astype(np.int64)
    rows = []
    for i, li in enumerate(line):
        p = profile[li]
        if cfg.cell_noise > 0:
            p = p * rng.gamma(cfg.cell_noise, 1.0 / cfg.cell_noise, size=p.size)
        rows.append(sp.csr_matrix(rng.multinomial(depth[i], p / p.sum()).astype(np.int32)))
    lines = np.asarray(held_src.cell_lines, dtype=object)[line]
    obs = pd.DataFrame(
        {
            PROXY_GROUP_KEY: pd.Categorical(lines),
            PROXY_LABEL_KEY: pd.Categorical(
                np.asarray(CLASSES, dtype=object)[held_src.labels[line]], categories=CLASSES
            ),
            "ln_ic50": held_src.ln_ic50[line],
            "total_counts": depth,
        },
        index=[f"{name}-{k % n}" for k, name in enumerate(lines)],
    )
    adata = ad.AnnData(sp.vstack(rows).tocsr(), obs=obs)
    adata.var_names = list(held_src.expression.values.columns)
    description = {
        "kind": "proxy target: pseudo single cells of held-out bulk cell lines",
        "drug": source.drug,
        "held_out_lines": held_src.cell_lines,
        "held_out_labels": [CLASSES[c] for c in held_src.labels],
        **cfg.to_dict(),
    }
    adata.uns["scad_proxy"] = description
    name = (
        f"proxy target ({held_idx.size} held-out lines × {n} pseudo-cells, "
        f"{cfg.min_depth:,}–{cfg.max_depth:,} UMIs)"
    )
    target = target_from_anndata(
        adata, label_key=PROXY_LABEL_KEY, group_key=PROXY_GROUP_KEY, name=name
    )
    return source.subset(rest), target
