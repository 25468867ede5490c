"""Input validation shared by every entry point that takes expression data.

scfm models are trained on raw UMI / read counts, so every input is checked before use:

* values are finite, non-negative integers (log-normalized or scaled data are rejected, naming the
  likely cause and the fix);
* gene and cell names are unique; the matrix is not empty;
* enough genes map to the human vocabulary (mouse data and other species are rejected);
* cells with zero counts are reported (they carry no signal; the corpus QC drops them).

Dense, sparse (CSR/CSC) and backed h5ad matrices are checked block by block, never densified whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from scfm.data.genes import GeneMapping, GeneVocab

logger = logging.getLogger(__name__)

# A full GRCh38 10x feature list (36,601 genes, many lncRNAs) maps at about 50%, the chr21 example
# at 42%; species problems are caught by the Ensembl-prefix and symbol-case checks below.
DEFAULT_MIN_MAPPED_FRACTION = 0.2
BLOCK_ROWS = 10_000


class InputValidationError(ValueError):
    """Expression input that scfm cannot use; the message names the problem and the fix."""


@dataclass(frozen=True)
class ValidationReport:
    """What validation found. ``print`` it for a readable summary."""

    n_cells: int
    n_genes: int
    nnz: int
    dtype: str
    min_value: float
    max_value: float
    n_empty_cells: int
    empty_cell_examples: list[str] = field(default_factory=list)
    fraction_genes_mapped: float | None = None
    warnings: list[str] = field(default_factory=list)
    kind: str = "counts"  # what the values were checked as (see check_counts)

    @property
    def density(self) -> float:
        cells_genes = self.n_cells * self.n_genes
        return self.nnz / cells_genes if cells_genes else 0.0

    def to_dict(self) -> dict:
        return {
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "nnz": self.nnz,
            "density": round(self.density, 6),
            "dtype": self.dtype,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "n_empty_cells": self.n_empty_cells,
            "empty_cell_examples": self.empty_cell_examples,
            "fraction_genes_mapped": self.fraction_genes_mapped,
            "warnings": self.warnings,
            "kind": self.kind,
        }

    def __str__(self) -> str:
        lines = [
            f"input: {self.n_cells:,} cells × {self.n_genes:,} genes, {self.nnz:,} non-zeros "
            f"({100 * self.density:.2f}% dense), {self.dtype}, values {self.min_value:g}"
            f"..{self.max_value:g} ({'raw counts' if self.kind == 'counts' else self.kind}: ok)",
            f"  cells with zero counts: {self.n_empty_cells:,}"
            + (f" (e.g. {', '.join(self.empty_cell_examples[:3])})" if self.n_empty_cells else ""),
        ]
        if self.fraction_genes_mapped is not None:
            lines.append(f"  genes in the vocabulary: {100 * self.fraction_genes_mapped:.1f}%")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def iter_row_blocks(
    X, block_rows: int = BLOCK_ROWS
) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start_row, block)`` over a dense, sparse or backed (on-disk) matrix."""
    n = X.shape[0]
    if sp.issparse(X) and not isinstance(X, sp.csr_matrix | sp.csr_array):
        X = sp.csr_matrix(X)  # CSC row slicing is slow; in-memory conversion is one pass
    for start in range(0, n, block_rows):
        yield start, X[start : start + block_rows]


def _block_values(block) -> np.ndarray:
    if sp.issparse(block):
        return np.asarray(block.data)
    return np.asarray(block).ravel()


def _looks_log_normalized(values: np.ndarray) -> bool:
    # log1p(normalize_total) data: small non-integer values, max well below typical counts.
    return bool(values.size) and float(values.max()) < 30 and float(values.min()) >= 0


# Raw library sizes vary several-fold between cells; CPM/TPM (even rounded) sum to a constant.
_CONSTANT_TOTAL_CV = 0.01
_MIN_CELLS_FOR_TOTALS = 20


def check_library_sizes(totals: np.ndarray, where: str = "the expression matrix") -> None:
    """Reject integer-looking values whose per-cell totals are (nearly) one constant.

    CPM/TPM rounded to integers pass every integer check; their totals give them away (every
    cell sums to about 10^6, or another fixed depth). Needs at least 20 non-empty cells.
    """
    t = np.asarray(totals, dtype=np.float64)
    t = t[t > 0]
    _check_total_moments(len(t), float(t.sum()), float((t * t).sum()), where)


def _check_total_moments(n: int, s1: float, s2: float, where: str) -> None:
    """:func:`check_library_sizes` from running sums of the non-zero totals (O(1) memory)."""
    if n < _MIN_CELLS_FOR_TOTALS:
        return
    mean = s1 / n
    cv = float(np.sqrt(max(s2 / n - mean * mean, 0.0))) / mean
    if cv < _CONSTANT_TOTAL_CV:
        raise InputValidationError(
            f"every cell of {where} sums to about {mean:,.0f} (coefficient of variation "
            f"{cv:.4f} over {n:,} cells; raw library sizes vary several-fold): these look "
            "like CPM/TPM values rounded to integers (or counts down-sampled to one depth), not "
            "raw counts; pass the raw count matrix (X, .raw or the counts layer)"
        )


def _non_integer_hint(values: np.ndarray, frac: np.ndarray, totals: np.ndarray) -> str:
    """Why a matrix may hold non-integer values, and what to do about it."""
    if _looks_log_normalized(values):
        return "looks log-normalized; pass raw counts in X or name the layer with counts"
    t = totals[totals > 0]
    if len(t) >= _MIN_CELLS_FOR_TOTALS and t.std() / t.mean() < _CONSTANT_TOTAL_CV:
        return (
            f"every cell sums to about {t.mean():,.0f}: looks normalized (CPM/TPM); pass raw "
            "counts in X or name the layer with counts"
        )
    return (
        f"{100 * frac.mean():.0f}% of the values are fractional and cell totals vary: looks like "
        "ambient-RNA-corrected counts (SoupX, CellBender, DecontX) or otherwise normalized; "
        "round them to integers (e.g. SoupX adjustCounts(roundToInt=TRUE), or np.rint on the "
        "corrected matrix) or pass the raw count matrix"
    )


ValueKind = Literal["counts", "normalized", "bulk"]
# integers this large in a matrix declared log1p-normalized are raw counts
_NORMALIZED_MAX = 30.0


def check_counts(
    X,
    *,
    obs_names: Sequence[str] | None = None,
    block_rows: int = BLOCK_ROWS,
    kind: ValueKind = "counts",
) -> ValidationReport:
    """Check that ``X`` (cells × genes) holds raw counts, block by block.

    Parameters
    ----------
    kind
        ``counts`` (the default: raw counts, integers), ``normalized`` (declared
        ``log1p``-normalized values: non-integers allowed, but a matrix of integers above 30 is
        refused as raw counts) or ``bulk`` (declared bulk expression, counts or TPM: any
        non-negative finite values).

    Raises
    ------
    InputValidationError
        Empty matrix, NaN/inf, negative or non-integer values.
    """
    if kind not in ("counts", "normalized", "bulk"):
        raise ValueError(f"kind must be 'counts', 'normalized' or 'bulk', got {kind!r}")
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        raise InputValidationError(
            f"the expression matrix is empty ({n_cells} cells × {n_genes} genes): "
            "pass a matrix with at least one cell and one gene"
        )
    dtype = str(X.dtype)
    if not (np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.bool_)):
        raise InputValidationError(f"the expression matrix has non-numeric dtype {dtype}")

    nnz = 0
    all_integers = True
    n_tot, s1, s2 = 0, 0.0, 0.0  # running moments of the non-zero cell totals (CPM check)
    vmin, vmax = np.inf, -np.inf
    empty: list[int] = []
    n_empty = 0
    for start, block in iter_row_blocks(X, block_rows):
        values = _block_values(block)
        row_sums = np.asarray(block.sum(axis=1)).ravel()
        if np.issubdtype(values.dtype, np.floating):
            bad = ~np.isfinite(values)
            if bad.any():
                kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in values[bad][:1000]})
                raise InputValidationError(
                    f"the expression matrix contains {'/'.join(kinds)} values "
                    f"({int(bad.sum()):,} in rows {start}..{start + block.shape[0] - 1}): "
                    "pass raw counts without missing or infinite values"
                )
        if values.size:
            vmin, vmax = min(vmin, float(values.min())), max(vmax, float(values.max()))
            if vmin < 0:
                raise InputValidationError(
                    f"the expression matrix contains negative values (min {vmin:g}): it looks "
                    "scaled or batch-corrected; pass raw counts in X or name the layer with counts"
                )
            if np.issubdtype(values.dtype, np.floating):
                frac = values != np.rint(values)
                all_integers = all_integers and not frac.any()
                if frac.any() and kind == "counts":
                    example = float(values[frac][0])
                    hint = _non_integer_hint(values, frac, row_sums)
                    raise InputValidationError(
                        f"the expression matrix holds non-integer values (e.g. {example:g}; "
                        f"{int(frac.sum()):,} in rows {start}..{start + block.shape[0] - 1}): "
                        f"{hint}"
                    )
        nnz += int(np.count_nonzero(values))
        nz_sums = row_sums[row_sums > 0].astype(np.float64)
        n_tot, s1, s2 = n_tot + len(nz_sums), s1 + nz_sums.sum(), s2 + (nz_sums**2).sum()
        zero_rows = np.flatnonzero(row_sums == 0)
        n_empty += len(zero_rows)
        empty.extend((start + zero_rows[: max(0, 10 - len(empty))]).tolist())

    if not np.isfinite(vmin):  # all-zero sparse matrix
        vmin = vmax = 0.0
    if kind == "normalized" and all_integers and vmax > _NORMALIZED_MAX:
        raise InputValidationError(
            f"the matrix was declared log1p-normalized (pre_normalized), but it holds integers "
            f"up to {vmax:g}: these look like raw counts; pass them without pre_normalized"
        )
    if kind == "counts":
        _check_total_moments(n_tot, s1, s2, "the expression matrix")
    warnings = []
    if n_empty:
        warnings.append(
            f"{n_empty:,} of {n_cells:,} cells have zero counts and will be dropped by QC"
        )
    names = [str(obs_names[i]) for i in empty] if obs_names is not None else [str(i) for i in empty]
    return ValidationReport(
        n_cells=n_cells,
        n_genes=n_genes,
        nnz=nnz,
        dtype=dtype,
        min_value=float(vmin),
        max_value=float(vmax),
        n_empty_cells=n_empty,
        empty_cell_examples=names,
        warnings=warnings,
        kind=kind,
    )


def check_names(names: Sequence[str], what: str) -> None:
    """Reject duplicated or empty names (``what`` is ``"gene"`` or ``"cell"``)."""
    arr = np.asarray([str(n) for n in names])
    if (arr == "").any():
        raise InputValidationError(f"{int((arr == '').sum())} {what} names are empty strings")
    uniq, counts = np.unique(arr, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        fix = (
            "make them unique (e.g. adata.var_names_make_unique()) or use Ensembl ids"
            if what == "gene"
            else "make them unique (e.g. adata.obs_names_make_unique())"
        )
        raise InputValidationError(
            f"{len(dup):,} duplicated {what} names (e.g. {', '.join(dup[:5])}): {fix}"
        )


def check_species(mapping: GeneMapping, min_mapped_fraction: float) -> None:
    """Reject inputs whose genes are mostly not human vocabulary genes."""
    report = mapping.report
    frac = report.fraction_mapped
    foreign = {k: v for k, v in mapping.foreign_ensembl.items()}
    n_foreign = sum(foreign.values())
    if n_foreign and n_foreign >= 0.5 * report.n_input:
        prefix = max(foreign, key=foreign.get)
        raise InputValidationError(
            f"{n_foreign:,} of {report.n_input:,} genes are non-human Ensembl ids ({prefix}…): "
            "wrong species; scfm's vocabulary is human. Map genes to human orthologs first"
        )
    direct = report.by_rule["direct"]
    # Mouse symbols are capitalized (Cd3e); all-lowercase human symbols (cd3e) map as they are.
    if direct >= 20 and mapping.n_mouse_style > 0.5 * direct:
        example = next(
            g
            for g, i, r in zip(mapping.genes, mapping.index, mapping.rules, strict=True)
            if r == "direct" and mapping.vocab.names[i] != g and g[:1].isupper()
        )
        raise InputValidationError(
            f"{mapping.n_mouse_style:,} of {direct:,} gene symbols match the human vocabulary "
            f"only after changing case (e.g. {example!r}): these look like mouse symbols; "
            "wrong species. Map genes to human orthologs first"
        )
    if frac < min_mapped_fraction:
        raise InputValidationError(
            f"only {100 * frac:.1f}% of the {report.n_input:,} input genes map to the human "
            f"{len(mapping.vocab):,}-gene vocabulary (minimum {100 * min_mapped_fraction:.0f}%): "
            "check that the genes are human symbols or Ensembl ids (wrong species or id type?); "
            f"unmapped e.g. {', '.join(report.unmapped_examples[:5])}"
        )


@dataclass(frozen=True)
class ValidatedInput:
    """A validated count matrix and its gene mapping."""

    report: ValidationReport
    mapping: GeneMapping


def validate_input(
    X,
    var_names: Sequence[str],
    obs_names: Sequence[str],
    *,
    vocab: GeneVocab | None = None,
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
    block_rows: int = BLOCK_ROWS,
    kind: ValueKind = "counts",
) -> ValidatedInput:
    """Validate a cells × genes count matrix with its names and map its genes.

    Parameters
    ----------
    X
        Dense array, scipy sparse matrix, or a backed h5ad matrix.
    var_names, obs_names
        Gene identifiers (symbols or Ensembl ids) and cell names.
    vocab
        Vocabulary to map onto (default: the scFoundation vocabulary).
    min_mapped_fraction
        Reject inputs where fewer genes than this map to the vocabulary.
    kind
        What the values are (see :func:`check_counts`); raw counts unless declared.

    Raises
    ------
    InputValidationError
        With a message that names the problem and the fix.
    """
    if X.shape != (len(obs_names), len(var_names)):
        raise InputValidationError(
            f"matrix shape {X.shape} does not match {len(obs_names)} cell and "
            f"{len(var_names)} gene names"
        )
    check_names(var_names, "gene")
    check_names(obs_names, "cell")
    report = check_counts(X, obs_names=obs_names, block_rows=block_rows, kind=kind)
    mapping = (vocab or GeneVocab.load()).map(var_names)
    check_species(mapping, min_mapped_fraction)
    report = ValidationReport(
        **{**report.__dict__, "fraction_genes_mapped": mapping.report.fraction_mapped}
    )
    return ValidatedInput(report=report, mapping=mapping)


def layer_matrix(adata, layer: str | None):
    """``(matrix, gene names)`` of an AnnData: ``X`` (None), ``adata.raw`` (``"raw"``, with the
    genes of ``.raw``), or a layer. The one meaning of ``layer`` everywhere in scfm."""
    if layer is None:
        return adata.X, adata.var_names
    if layer == "raw":
        if adata.raw is None:
            raise InputValidationError(
                "layer='raw' means adata.raw, and adata has no .raw: pass layer=None for X or "
                f"the name of a layer with raw counts (layers: {list(adata.layers) or 'none'})"
            )
        return adata.raw.X, adata.raw.var_names
    if layer not in adata.layers:
        raise InputValidationError(
            f"adata has no layer {layer!r} (layers: {list(adata.layers) or 'none'}); pass "
            "layer=None to use X, 'raw' for adata.raw, or the name of the layer with the values"
        )
    return adata.layers[layer], adata.var_names


def validate_anndata(adata, *, layer: str | None = None, **kwargs) -> ValidatedInput:
    """:func:`validate_input` for an AnnData (in memory or backed); ``layer`` picks the counts
    (see :func:`layer_matrix`)."""
    X, genes = layer_matrix(adata, layer)
    return validate_input(X, genes, adata.obs_names, **kwargs)
