"""Drug-response data shared by the drug heads (DeepCDR; SCAD reuses the expression and names).

    response table (GDSC2 / GDSC1 / CCLE or any table with cell, drug, value columns)
      │ names normalized (upper-case, only A-Z 0-9: the ``cell_line_key`` rule), NaN dropped
      ├─ join cell lines ◄── expression (cell lines × genes: GDSC z-scores, or bulk TPM / counts)
      ├─ join drugs      ◄── SMILES (invalid SMILES: reported, drug skipped)
      │ every row that does not join is counted in a :class:`JoinReport` (never dropped silently)
      │ repeated (cell line, drug) pairs averaged; targets ln(IC50 µM)
      ▼
    DrugResponseData: pairs (cell, drug, y), cell lines, drugs + graphs, expression, tissue
      ▼
    make_pair_split: random pairs | leave cell lines out | leave drugs out, + a validation part

**Expression kinds.** The shared GDSC matrix (``gdsc_expression``) holds *per-cell-line z-scores*
(every row has mean 0 and SD 1), not expression levels. The raw-expression branch and the
baselines use them as given. The scfm branch needs non-negative expression: :func:`model_input`
turns z into pseudo-expression ``2^(scale · z)`` (monotone, positive; ``scale`` = the assumed SD of
log2 expression within a cell line, default 2), which ``scfm.embed(..., pre_normalized="bulk")``
then normalizes like any bulk sample. What that costs: no absolute levels (every line has the same
mean and spread, so the depth tokens carry almost nothing), no zeros (every mapped gene is an
encoder token: ≈ 6,000 tokens per line), and only the mapped genes are used (5,779 of 6,163 by exact
name, 6,046 with HGNC aliases). A real bulk RNA-seq matrix (TPM or counts, non-negative) goes to the
model unchanged (``kind="bulk"``), and to the raw-expression branch as ``log1p`` of
median-total-normalized values.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from scfm.tasks.drug_graph import DrugGraphs

logger = logging.getLogger(__name__)

ExpressionKind = Literal["auto", "zscore", "bulk"]
SplitKind = Literal["random", "cell", "drug"]
SPLIT_KINDS: tuple[str, ...] = ("random", "cell", "drug")
SPLIT_NAMES = {
    "random": "random pairs",
    "cell": "leave cell lines out",
    "drug": "leave drugs out",
}
MIN_MAPPED_FRACTION = 0.5  # of the expression genes that must be in the scfm vocabulary
DEFAULT_ZSCORE_SCALE = 2.0
N_EXAMPLES = 8  # names listed per category in reports


class DrugDataError(ValueError):
    """A drug-response input cannot be used; the message names the fix."""


def normalize_name(name: Any) -> str:
    """``"NCI-H460"`` → ``"NCIH460"``: upper-case, everything but A-Z and 0-9 removed."""
    return re.sub(r"[^A-Z0-9]", "", str(name).upper())


# ------------------------------------------------------------------------------ response tables
@dataclass(frozen=True)
class ResponseTable:
    """Where a named response table lives and which of its columns mean what."""

    resource: str  # scfm.datasets name
    cell_col: str
    drug_col: str
    value_col: str
    value: Literal["ln_ic50", "ic50_um"]  # ic50_um values are turned into ln(IC50)


RESPONSE_TABLES: dict[str, ResponseTable] = {
    "GDSC2": ResponseTable("gdsc2_ic50", "CELL_LINE_NAME", "DRUG_NAME", "LN_IC50", "ln_ic50"),
    "GDSC1": ResponseTable("gdsc1_ic50", "CELL_LINE_NAME", "DRUG_NAME", "LN_IC50", "ln_ic50"),
    "CCLE": ResponseTable(
        "ccle_ic50", "Primary Cell Line Name", "Compound", "IC50 (uM)", "ic50_um"
    ),
}


def read_table(path: str | Path) -> pd.DataFrame:
    """A ``.parquet``, ``.tsv`` / ``.txt`` (tab-separated) or ``.csv`` table."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    sep = "\t" if path.suffix in (".tsv", ".txt") else ","
    return pd.read_csv(path, sep=sep)


def read_response(
    table: pd.DataFrame | str | Path,
    *,
    cell_col: str,
    drug_col: str,
    value_col: str,
    value: Literal["ln_ic50", "ic50_um"] = "ln_ic50",
) -> tuple[pd.DataFrame, int]:
    """Rows ``cell_name, drug_name, cell_key, drug_key, y`` (y = ln IC50) and the NaN rows dropped.

    Raises
    ------
    DrugDataError
        A required column is missing, or ``ic50_um`` values are not positive.
    """
    df = table if isinstance(table, pd.DataFrame) else read_table(table)
    missing = [c for c in (cell_col, drug_col, value_col) if c not in df.columns]
    if missing:
        raise DrugDataError(
            f"the response table has no column {', '.join(map(repr, missing))} (columns: "
            f"{', '.join(map(str, df.columns))}); name the cell-line, drug and response columns "
            "with cell_col / drug_col / value_col (CLI: --cell-col / --drug-col / --value-col)"
        )
    y = pd.to_numeric(df[value_col], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(y) & df[cell_col].notna().to_numpy() & df[drug_col].notna().to_numpy()
    if value == "ic50_um":
        if (y[ok] <= 0).any():
            raise DrugDataError(
                f"column {value_col!r} holds IC50 values <= 0 ({int((y[ok] <= 0).sum())} rows); "
                "IC50 in µM must be positive (pass value='ln_ic50' for values already logged)"
            )
        y = np.log(np.where(ok, y, 1.0))
    out = pd.DataFrame(
        {
            "cell_name": df[cell_col].astype(str).to_numpy()[ok],
            "drug_name": df[drug_col].astype(str).to_numpy()[ok],
            "y": y[ok],
        }
    )
    out["cell_key"] = out["cell_name"].map(normalize_name)
    out["drug_key"] = out["drug_name"].map(normalize_name)
    return out, int((~ok).sum())


def read_named_response(
    dataset: str = "GDSC2",
    response: pd.DataFrame | str | Path | None = None,
    *,
    cell_col: str | None = None,
    drug_col: str | None = None,
    value_col: str | None = None,
    value: Literal["ln_ic50", "ic50_um"] | None = None,
) -> tuple[pd.DataFrame, int]:
    """:func:`read_response` of a named table (``GDSC2``, ``GDSC1``, ``CCLE``) or of ``response``
    (columns default to ``cell_line``, ``drug``, ``ln_ic50``)."""
    if response is None:
        if dataset not in RESPONSE_TABLES:
            raise DrugDataError(
                f"unknown drug-response data set {dataset!r}: choose one of "
                f"{', '.join(RESPONSE_TABLES)} or pass a response table"
            )
        from scfm import datasets

        spec = RESPONSE_TABLES[dataset]
        response = datasets.fetch(spec.resource)
        cell_col, drug_col = cell_col or spec.cell_col, drug_col or spec.drug_col
        value_col, value = value_col or spec.value_col, value or spec.value
    return read_response(
        response,
        cell_col=cell_col or "cell_line",
        drug_col=drug_col or "drug",
        value_col=value_col or "ln_ic50",
        value=value or "ln_ic50",
    )


# ------------------------------------------------------------------------------ expression
@dataclass
class CellLineExpression:
    """Cell lines × genes. ``values`` rows are normalized cell-line keys, columns gene names.

    ``kind``: ``zscore`` (per-cell-line z-scores, as the shared GDSC matrix) or ``bulk``
    (non-negative TPM / counts of bulk RNA-seq).
    """

    values: pd.DataFrame
    kind: Literal["zscore", "bulk"]
    source: str = ""
    n_genes_mapped: int = 0

    @property
    def cell_lines(self) -> list[str]:
        return self.values.index.tolist()

    def subset(self, cell_lines: Sequence[str]) -> CellLineExpression:
        return CellLineExpression(
            self.values.loc[list(cell_lines)], self.kind, self.source, self.n_genes_mapped
        )


def expression_from(
    data: pd.DataFrame | Any | str | Path | None = None, *, kind: ExpressionKind = "auto"
) -> CellLineExpression:
    """Check and wrap an expression matrix (cell lines × genes).

    Parameters
    ----------
    data
        A DataFrame (index = cell-line names), an AnnData (obs = cell lines, var = genes), a
        ``.parquet`` / ``.csv`` / ``.h5ad`` path, or None for the shared GDSC matrix.
    kind
        ``auto``: ``zscore`` if any value is negative, else ``bulk``.

    Raises
    ------
    DrugDataError
        NaN / infinite values, negative values declared ``bulk``, duplicated cell lines or genes,
        or too few genes in the scfm vocabulary (the message names the fix).
    """
    source = "gdsc_expression"
    if data is None:
        df = _shared_expression().copy()  # cached read; callers get their own copy
    elif isinstance(data, pd.DataFrame):
        df, source = data, "DataFrame"
    elif isinstance(data, str | Path):
        source = str(data)
        if str(data).endswith(".h5ad"):
            import anndata as ad

            df = _anndata_frame(ad.read_h5ad(data))
        else:
            df = read_table(data)
            if df.columns[0] in ("cell_line", "Unnamed: 0", "") or df.iloc[:, 0].dtype == object:
                df = df.set_index(df.columns[0])
    elif hasattr(data, "obs_names") and hasattr(data, "var_names"):
        df, source = _anndata_frame(data), "AnnData"
    else:
        raise DrugDataError(
            f"expression must be a DataFrame, an AnnData or a file path, got {type(data).__name__}"
        )
    values = _check_expression(df, kind)
    resolved = kind if kind != "auto" else ("zscore" if (values.to_numpy() < 0).any() else "bulk")
    if resolved == "bulk" and (values.to_numpy() < 0).any():
        raise DrugDataError(
            "the expression matrix has negative values but kind='bulk': bulk RNA-seq must be "
            "non-negative TPM or counts; pass kind='zscore' (or 'auto') for z-scored expression"
        )
    n_mapped = _check_genes(values.columns)
    logger.info(
        "expression %s: %d cell lines × %d genes (%s), %d genes in the scfm vocabulary",
        source,
        *values.shape,
        resolved,
        n_mapped,
    )
    return CellLineExpression(values, resolved, source, n_mapped)


@cache
def _shared_expression() -> pd.DataFrame:
    """The shared GDSC matrix, read once per process."""
    from scfm import datasets

    return pd.read_parquet(datasets.fetch("gdsc_expression"))


def _anndata_frame(adata) -> pd.DataFrame:
    import scipy.sparse as sp

    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return pd.DataFrame(X, index=adata.obs_names.astype(str), columns=adata.var_names.astype(str))


def _check_expression(df: pd.DataFrame, kind: ExpressionKind) -> pd.DataFrame:
    if kind not in ("auto", "zscore", "bulk"):
        raise DrugDataError(f"expression kind must be auto, zscore or bulk, got {kind!r}")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DrugDataError(f"the expression matrix is empty ({df.shape[0]} × {df.shape[1]})")
    try:
        X = df.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DrugDataError(
            f"the expression matrix has non-numeric entries ({exc}); rows must be cell lines "
            "(names in the index) and columns genes"
        ) from None
    bad = ~np.isfinite(X)
    if bad.any():
        rows = df.index[bad.any(axis=1)].astype(str).tolist()
        raise DrugDataError(
            f"the expression matrix contains {int(bad.sum())} NaN or infinite values in "
            f"{len(rows)} cell lines (e.g. {', '.join(rows[:N_EXAMPLES])}): impute them or drop "
            "those cell lines / genes before (e.g. df.dropna(axis=1))"
        )
    keys = pd.Index([normalize_name(c) for c in df.index])
    if keys.duplicated().any():
        dups = sorted(set(keys[keys.duplicated()]))
        raise DrugDataError(
            f"{len(dups)} cell-line names collide after normalization (e.g. "
            f"{', '.join(dups[:N_EXAMPLES])}): average or drop the duplicated rows first"
        )
    genes = pd.Index(df.columns.astype(str))
    if genes.duplicated().any():
        dups = sorted(set(genes[genes.duplicated()]))
        raise DrugDataError(
            f"duplicated gene names in the expression matrix (e.g. {', '.join(dups[:N_EXAMPLES])}):"
            " sum or drop the duplicated columns first"
        )
    return pd.DataFrame(X, index=keys, columns=genes)


def _check_genes(genes: pd.Index) -> int:
    """Genes in the scfm vocabulary (standard rules); too few → the matrix is probably wrong."""
    from scfm.data.genes import GeneVocab

    mapping = GeneVocab.load().map(list(genes))
    n = int(mapping.mapped.sum())
    if n < MIN_MAPPED_FRACTION * len(genes):
        unknown = [g for g, m in zip(genes, mapping.mapped, strict=True) if not m]
        raise DrugDataError(
            f"only {n} of the {len(genes):,} expression genes are in the scfm vocabulary (e.g. "
            f"unknown: {', '.join(unknown[:N_EXAMPLES])}); columns must be human gene symbols or "
            "Ensembl ids with cell lines as rows (transpose a genes × cell-lines matrix)"
        )
    if n < len(genes):
        logger.info("%d of %d expression genes are not in the scfm vocabulary", len(genes) - n, n)
    return n


def top_variance_genes(expr: CellLineExpression, max_genes: int) -> CellLineExpression:
    """The ``max_genes`` genes with the largest variance across the cell lines of ``expr``
    (column order kept). Unsupervised: no response values are used."""
    if max_genes < 1:
        raise DrugDataError(f"max_genes must be at least 1, got {max_genes}")
    if max_genes >= expr.values.shape[1]:
        return expr
    var = expr.values.var(axis=0).to_numpy()
    keep = np.sort(np.argsort(-var, kind="stable")[:max_genes])
    return CellLineExpression(
        expr.values.iloc[:, keep],
        expr.kind,
        expr.source,
        _check_genes(expr.values.columns[keep]),
    )


def log_normalized(values: np.ndarray) -> np.ndarray:
    """``log1p(x / row total · median row total)``: scfm's bulk normalization, for baselines."""
    totals = values.sum(axis=1, keepdims=True)
    target = float(np.median(totals[totals > 0])) if (totals > 0).any() else 1.0
    scaled = np.divide(values * target, totals, out=np.zeros_like(values), where=totals > 0)
    return np.log1p(scaled).astype(np.float32)


def feature_matrix(expr: CellLineExpression) -> np.ndarray:
    """Input of the raw-expression branch and the baselines: z-scores as given, bulk
    values log-normalized (per-gene standardization happens inside each method, on training
    lines only)."""
    X = expr.values.to_numpy(dtype=np.float32)
    return X if expr.kind == "zscore" else log_normalized(X)


def model_input(expr: CellLineExpression, *, zscore_scale: float = DEFAULT_ZSCORE_SCALE):
    """AnnData for ``scfm.embed(..., pre_normalized="bulk")``: bulk values unchanged, z-scores
    as pseudo-expression ``2^(zscore_scale · z)`` (see the module docstring for the cost)."""
    import anndata as ad

    X = expr.values.to_numpy(dtype=np.float32)
    if expr.kind == "zscore":
        if zscore_scale <= 0:
            raise DrugDataError(f"zscore_scale must be positive, got {zscore_scale}")
        X = np.exp2(zscore_scale * X.astype(np.float64)).astype(np.float32)
    adata = ad.AnnData(X)
    adata.obs_names = expr.values.index.astype(str)
    adata.var_names = expr.values.columns.astype(str)
    return adata


def embed_expression(
    expr: CellLineExpression,
    backbone,
    *,
    pool: Sequence[str] = ("S", "T", "max", "mean"),
    zscore_scale: float = DEFAULT_ZSCORE_SCALE,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """Frozen scfm embeddings of every cell line of ``expr`` (``pre_normalized="bulk"``, the
    :func:`model_input` transform), rows in ``expr`` order, and the seconds it took.

    ``backbone`` is a :class:`~scfm.tasks.models.Backbone` or an XTrimoGene.
    """
    import time

    from scfm.inference import embed

    model = getattr(backbone, "model", backbone)
    adata = model_input(expr, zscore_scale=zscore_scale)
    start = time.perf_counter()
    emb = embed(
        adata,
        model,
        pre_normalized="bulk",
        pool=tuple(pool),
        batch_size=batch_size,
        device=device,
        progress=progress,
        key_added="X_scfm",
    )
    return emb, time.perf_counter() - start


# ------------------------------------------------------------------------------ tissue
def cell_line_tissue(cell_keys: Sequence[str]) -> np.ndarray:
    """Primary site of each cell line from the CCLE annotations: the site part of ``CCLE_ID``
    (``DMS53_LUNG`` → ``lung``; complete where ``Site_Primary`` is often empty), matched by the
    ``CCLE_ID`` prefix or the normalized ``Name``; ``"unknown"`` for lines not annotated. A key
    with two sites (``TT``: thyroid and oesophagus) takes the first row's."""
    from scfm import datasets

    ann = pd.read_csv(datasets.fetch("ccle_cell_annotations"), sep="\t")
    parts = ann["CCLE_ID"].str.split("_", n=1)
    prefix, site = parts.str[0], parts.str[1].str.lower()
    lookup: dict[str, str] = {}
    for keys in (ann["Name"].dropna().map(normalize_name), prefix.map(normalize_name)):
        for key, value in zip(keys, site[keys.index], strict=True):
            if isinstance(value, str) and key:
                lookup.setdefault(key, value)
    return np.array([lookup.get(k, "unknown") for k in cell_keys], dtype=object)


# ------------------------------------------------------------------------------ the join
@dataclass
class JoinReport:
    """What the join of responses, expression and SMILES kept and what it could not match."""

    dataset: str
    n_rows: int
    n_rows_missing_value: int
    n_cell_lines_response: int
    n_cell_lines_matched: int
    unmatched_cell_lines: list[str]
    n_rows_unmatched_cell: int
    n_drugs_response: int
    n_drugs_matched: int
    unmatched_drugs: list[str]
    n_rows_unmatched_drug: int
    invalid_smiles: dict[str, str]
    n_rows_invalid_smiles: int
    ambiguous_keys: dict[str, list[str]]  # several raw names → one normalized key
    n_rows_joined: int
    n_repeated_rows: int  # joined rows merged into another (same cell line and drug): averaged
    n_pairs: int
    n_cell_lines: int
    n_drugs: int
    n_expression_lines_unused: int
    subsample: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """A human-readable summary, one fact a line."""

        def ex(names: list[str]) -> str:
            return f" (e.g. {', '.join(names[:N_EXAMPLES])})" if names else ""

        out = [
            f"{self.dataset}: {self.n_rows:,} response rows, {self.n_rows_missing_value:,} "
            "without a value dropped",
            f"cell lines: {self.n_cell_lines_matched} of {self.n_cell_lines_response} have "
            f"expression; {len(self.unmatched_cell_lines)} do not "
            f"({self.n_rows_unmatched_cell:,} rows){ex(self.unmatched_cell_lines)}",
            f"drugs: {self.n_drugs_matched} of {self.n_drugs_response} have SMILES; "
            f"{len(self.unmatched_drugs)} do not ({self.n_rows_unmatched_drug:,} rows)"
            f"{ex(self.unmatched_drugs)}",
        ]
        if self.invalid_smiles:
            out.append(
                f"invalid SMILES: {len(self.invalid_smiles)} drugs skipped "
                f"({self.n_rows_invalid_smiles:,} rows){ex(sorted(self.invalid_smiles))}"
            )
        if self.ambiguous_keys:
            items = [f"{k} ← {' / '.join(v)}" for k, v in sorted(self.ambiguous_keys.items())]
            out.append(
                f"{len(items)} normalized names join several raw names (pairs averaged): "
                + "; ".join(items[:N_EXAMPLES])
            )
        out.append(
            f"joined {self.n_rows_joined:,} rows; {self.n_repeated_rows:,} repeated (cell line, "
            f"drug) rows averaged → {self.n_pairs:,} pairs of {self.n_cell_lines} cell lines × "
            f"{self.n_drugs} drugs"
        )
        if self.subsample:
            out.append(f"subsampled: {self.subsample}")
        return out


@dataclass
class DrugResponseData:
    """Joined drug-response pairs and everything the methods need about their cell lines and drugs.

    Attributes
    ----------
    pairs
        One row per (cell line, drug): ``cell`` / ``drug`` (indices into ``cell_lines`` /
        ``drugs``), ``y`` (mean ln IC50), ``n_measurements``.
    cell_lines, drugs
        Normalized keys, in index order; ``drug_names`` the first raw name of each drug.
    smiles, graphs
        Each drug's SMILES and molecular graph (same order as ``drugs``).
    expression
        Rows in ``cell_lines`` order.
    tissue
        Primary site of each cell line (``"unknown"`` where not annotated).
    """

    dataset: str
    pairs: pd.DataFrame
    cell_lines: list[str]
    drugs: list[str]
    drug_names: list[str]
    smiles: list[str]
    graphs: DrugGraphs
    expression: CellLineExpression
    tissue: np.ndarray
    report: JoinReport

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def cell(self) -> np.ndarray:
        return self.pairs["cell"].to_numpy()

    @property
    def drug(self) -> np.ndarray:
        return self.pairs["drug"].to_numpy()

    @property
    def y(self) -> np.ndarray:
        return self.pairs["y"].to_numpy(dtype=np.float64)


def read_smiles(smiles: pd.DataFrame | dict[str, str] | str | Path | None = None) -> pd.Series:
    """Drug name → SMILES (the shared ``drug_smiles`` table by default)."""
    if smiles is None:
        from scfm import datasets

        smiles = datasets.fetch("drug_smiles")
    if isinstance(smiles, dict):
        return pd.Series(smiles, dtype=object)
    df = smiles if isinstance(smiles, pd.DataFrame) else read_table(smiles)
    for cols in (("drug_name", "smiles"), ("drug", "smiles"), ("name", "smiles")):
        if set(cols) <= set(df.columns):
            return pd.Series(df[cols[1]].to_numpy(), index=df[cols[0]].astype(str), dtype=object)
    raise DrugDataError(
        "the SMILES table needs columns drug_name and smiles (has "
        f"{', '.join(map(str, df.columns))})"
    )


def load_drug_response(
    dataset: str = "GDSC2",
    *,
    response: pd.DataFrame | str | Path | None = None,
    cell_col: str | None = None,
    drug_col: str | None = None,
    value_col: str | None = None,
    value: Literal["ln_ic50", "ic50_um"] | None = None,
    expression: pd.DataFrame | Any | str | Path | None = None,
    expression_kind: ExpressionKind = "auto",
    smiles: pd.DataFrame | dict[str, str] | str | Path | None = None,
    max_cell_lines: int | None = None,
    max_drugs: int | None = None,
    max_genes: int | None = None,
    seed: int = 0,
) -> DrugResponseData:
    """Join a response table with cell-line expression and drug structures.

    Parameters
    ----------
    dataset
        ``GDSC2`` (default), ``GDSC1`` or ``CCLE`` (the shared tables), or a name for ``response``.
    response
        A custom table (DataFrame or file) instead of the named one; name its columns with
        ``cell_col`` / ``drug_col`` / ``value_col`` (``value``: ``ln_ic50`` or ``ic50_um``).
    expression, expression_kind
        See :func:`expression_from` (default: the shared GDSC z-score matrix).
    smiles
        Drug name → SMILES (default: the shared ``drug_smiles`` table).
    max_cell_lines, max_drugs
        Keep a seeded random subset of the joined cell lines / drugs (quick runs, tests).
    max_genes
        Keep the genes with the largest variance across the joined cell lines (the original
        DeepCDR used 697 genes; every gene is an scfm encoder token, so this sets the embedding
        cost). Unsupervised (no response values), but computed over all joined lines, test
        lines included.

    Raises
    ------
    DrugDataError
        Missing columns, bad expression, or no row that joins (with examples of both sides).
    """
    rows, n_missing = read_named_response(
        dataset,
        response,
        cell_col=cell_col,
        drug_col=drug_col,
        value_col=value_col,
        value=value,
    )
    expr = expression if isinstance(expression, CellLineExpression) else None
    if expr is None:
        expr = expression_from(expression, kind=expression_kind)
    smi = read_smiles(smiles)
    smi_keys = pd.Series(smi.to_numpy(), index=[normalize_name(n) for n in smi.index])
    smi_keys = smi_keys[~smi_keys.index.duplicated()]  # e.g. PD-0325901 and PD0325901: one drug

    ambiguous = {}
    for key_col, name_col in (("cell_key", "cell_name"), ("drug_key", "drug_name")):
        names = rows.groupby(key_col)[name_col].unique()
        ambiguous |= {k: sorted(v) for k, v in names.items() if len(v) > 1}

    cell_ok = rows["cell_key"].isin(expr.values.index)
    drug_ok = rows["drug_key"].isin(smi_keys.index)
    resp_cells = rows.drop_duplicates("cell_key")
    resp_drugs = rows.drop_duplicates("drug_key")
    unmatched_cells = sorted(resp_cells.loc[~cell_ok[resp_cells.index], "cell_name"])
    unmatched_drugs = sorted(resp_drugs.loc[~drug_ok[resp_drugs.index], "drug_name"])

    used_drugs = sorted(set(rows.loc[cell_ok & drug_ok, "drug_key"]))
    graphs, invalid = DrugGraphs.from_smiles({k: smi_keys[k] for k in used_drugs})
    valid = rows["drug_key"].isin(graphs.names)
    joined = rows[cell_ok & drug_ok & valid]
    if joined.empty:
        raise DrugDataError(
            "no response row has both a cell line with expression and a drug with SMILES: "
            f"response cell lines e.g. {', '.join(resp_cells['cell_key'][:4])}, expression "
            f"rows e.g. {', '.join(expr.values.index[:4])}; response drugs e.g. "
            f"{', '.join(resp_drugs['drug_key'][:4])}, SMILES names e.g. "
            f"{', '.join(smi_keys.index[:4])}. Check that the cell-line and drug columns hold "
            "names (not ids) and the expression matrix has cell lines as rows"
        )
    grouped = (
        joined.groupby(["cell_key", "drug_key"], sort=True)
        .agg(y=("y", "mean"), n_measurements=("y", "size"), drug_name=("drug_name", "first"))
        .reset_index()
    )
    subsample: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for col, limit in (("cell_key", max_cell_lines), ("drug_key", max_drugs)):
        present = np.array(sorted(set(grouped[col])))
        if limit is not None and limit < present.size:
            keep = set(rng.choice(present, size=limit, replace=False))
            grouped = grouped[grouped[col].isin(keep)]
            subsample[col.replace("_key", "_lines" if col == "cell_key" else "s")] = int(limit)
    cell_lines = sorted(set(grouped["cell_key"]))
    drugs = sorted(set(grouped["drug_key"]))
    cell_index = {k: i for i, k in enumerate(cell_lines)}
    drug_index = {k: i for i, k in enumerate(drugs)}
    pairs = pd.DataFrame(
        {
            "cell": grouped["cell_key"].map(cell_index).to_numpy(np.int64),
            "drug": grouped["drug_key"].map(drug_index).to_numpy(np.int64),
            "cell_key": grouped["cell_key"].to_numpy(),
            "drug_key": grouped["drug_key"].to_numpy(),
            "y": grouped["y"].to_numpy(np.float64),
            "n_measurements": grouped["n_measurements"].to_numpy(np.int64),
        }
    )
    expr = expr.subset(cell_lines)
    if max_genes is not None and max_genes < expr.values.shape[1]:
        expr = top_variance_genes(expr, max_genes)
        subsample["genes"] = int(max_genes)
    first_name = grouped.drop_duplicates("drug_key").set_index("drug_key")["drug_name"]
    graph_pos = {n: i for i, n in enumerate(graphs.names)}
    report = JoinReport(
        dataset=dataset,
        n_rows=len(rows) + n_missing,
        n_rows_missing_value=n_missing,
        n_cell_lines_response=int(rows["cell_key"].nunique()),
        n_cell_lines_matched=int(rows.loc[cell_ok, "cell_key"].nunique()),
        unmatched_cell_lines=unmatched_cells,
        n_rows_unmatched_cell=int((~cell_ok).sum()),
        n_drugs_response=int(rows["drug_key"].nunique()),
        n_drugs_matched=int(rows.loc[drug_ok, "drug_key"].nunique()),
        unmatched_drugs=unmatched_drugs,
        n_rows_unmatched_drug=int((~drug_ok).sum()),
        invalid_smiles=invalid,
        n_rows_invalid_smiles=int((cell_ok & drug_ok & ~valid).sum()),
        ambiguous_keys=ambiguous,
        n_rows_joined=len(joined),
        n_repeated_rows=len(joined) - int(len(joined.drop_duplicates(["cell_key", "drug_key"]))),
        n_pairs=len(pairs),
        n_cell_lines=len(cell_lines),
        n_drugs=len(drugs),
        n_expression_lines_unused=int(len(set(expr.values.index) - set(cell_lines))),
        subsample=subsample,
    )
    for line in report.lines():
        logger.info(line)
    return DrugResponseData(
        dataset=dataset,
        pairs=pairs,
        cell_lines=cell_lines,
        drugs=drugs,
        drug_names=[str(first_name[d]) for d in drugs],
        smiles=[str(smi_keys[d]) for d in drugs],
        graphs=DrugGraphs(drugs, [graphs.graphs[graph_pos[d]] for d in drugs]),
        expression=expr,
        tissue=cell_line_tissue(cell_lines),
        report=report,
    )


# ------------------------------------------------------------------------------ splits
@dataclass(frozen=True)
class PairSplitConfig:
    """How pairs are divided into train / validation / test."""

    kind: SplitKind = "random"  # random pairs | leave cell lines out | leave drugs out
    test_size: float = 0.1  # fraction of pairs / cell lines / drugs held out for testing
    val_size: float = 0.1  # fraction of the remaining pairs / lines / drugs for validation
    seed: int = 0


@dataclass
class PairSplit:
    """Pair row indices; ``val`` is a subset of ``train`` (held out for model selection)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    config: PairSplitConfig
    held_out: list[str] = field(default_factory=list)  # test cell lines / drugs (group splits)

    @property
    def train_only(self) -> np.ndarray:
        """Training pairs minus the validation pairs (what model-selecting methods fit on)."""
        return np.setdiff1d(self.train, self.val, assume_unique=True)

    @property
    def description(self) -> str:
        return SPLIT_NAMES[self.config.kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.config.kind,
            "description": self.description,
            "n_train": int(self.train.size),
            "n_val": int(self.val.size),
            "n_test": int(self.test.size),
            "n_held_out_groups": len(self.held_out),
            "config": asdict(self.config),
        }


def make_pair_split(data: DrugResponseData, cfg: PairSplitConfig) -> PairSplit:
    """A seeded split; validation is carved from training the same way as test (by pair, cell
    line or drug), so early stopping sees the test condition and never the test pairs.

    Raises
    ------
    DrugDataError
        Unknown kind, fractions out of range, or a fold that comes out empty (names the fix).
    """
    if cfg.kind not in SPLIT_KINDS:
        raise DrugDataError(f"split kind must be one of {', '.join(SPLIT_KINDS)}, got {cfg.kind!r}")
    for name, frac in (("test_size", cfg.test_size), ("val_size", cfg.val_size)):
        if not 0 < frac < 1:
            raise DrugDataError(f"{name} must be between 0 and 1, got {frac}")
    rng = np.random.default_rng(cfg.seed)
    if cfg.kind == "random":
        units = np.arange(data.n_pairs)
        unit_of_pair = units
        what = "pairs"
    else:
        col = "cell" if cfg.kind == "cell" else "drug"
        unit_of_pair = data.pairs[col].to_numpy()
        units = np.unique(unit_of_pair)
        what = "cell lines" if cfg.kind == "cell" else "drugs"
    order = rng.permutation(units)
    n_test = int(round(cfg.test_size * units.size))
    n_val = int(round(cfg.val_size * (units.size - n_test)))
    n_train = units.size - n_test - n_val
    if min(n_test, n_val, n_train) < 1:
        raise DrugDataError(
            f"split '{SPLIT_NAMES[cfg.kind]}' of {units.size} {what} with test_size="
            f"{cfg.test_size} and val_size={cfg.val_size} leaves a fold empty (train {n_train}, "
            f"validation {n_val}, test {n_test} {what}): use more cell lines / drugs (a larger "
            "subset) or change --test-size / --val-size"
        )
    test_units, val_units = order[:n_test], order[n_test : n_test + n_val]
    is_test = np.isin(unit_of_pair, test_units)
    is_val = np.isin(unit_of_pair, val_units)
    held_out: list[str] = []
    if cfg.kind != "random":
        names = data.cell_lines if cfg.kind == "cell" else data.drugs
        held_out = sorted(names[i] for i in test_units)
    return PairSplit(
        train=np.flatnonzero(~is_test),
        val=np.flatnonzero(is_val),
        test=np.flatnonzero(is_test),
        config=cfg,
        held_out=held_out,
    )
