"""Validate and map an AnnData once (:func:`prepare`), then model inputs block by block.

    X (any input genes; dense, sparse or backed)  ──row blocks──►  map onto the vocabulary
      │ counts:  log1p(x / total · 1e4),             S = log10(total)
      │ T:       the given log1p values,             S = log10(row sum of those values)
      │ A:       the given values,                   S = log10(total from obs)
      │ bulk:    log1p(x / total · median total),    S = T = log10(row sum of those values)
      ▼
    ModelBlock: (n × 19,264) CSR of model-scale values + S per cell

The model never sees anything else: the encoder takes the nonzero values and the depth tokens
(``scfm.model.rda.prepare_inference``). ``total`` is the sum over every input gene
(``depth_total="all_genes"``) or over the vocabulary genes only (``"vocab_genes"``, the official
convention). Only raw counts may go undeclared: ``pre_normalized`` names the other modes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from scfm.data.genes import GeneMapping
from scfm.data.packed import NormalizedCells, depth_token
from scfm.data.validate import (
    DEFAULT_MIN_MAPPED_FRACTION,
    InputValidationError,
    ValidationReport,
    iter_row_blocks,
    layer_matrix,
    validate_anndata,
)

log = logging.getLogger(__name__)

DepthTotal = Literal["all_genes", "vocab_genes"]
GeneMatching = Literal["standard", "exact"]
InputMode = Literal["counts", "T", "A", "bulk"]

_MODE_ALIASES: dict[Any, InputMode] = {
    None: "counts",
    False: "counts",
    "F": "counts",
    "counts": "counts",
    "T": "T",
    True: "T",
    "A": "A",
    "bulk": "bulk",
}


def check_input_mode(pre_normalized: Any) -> InputMode:
    """``None``/``"F"`` → ``counts``; ``"T"``, ``"A"``, ``"bulk"`` as they are."""
    try:
        return _MODE_ALIASES[pre_normalized]
    except (KeyError, TypeError):
        raise ValueError(
            f"pre_normalized={pre_normalized!r} not understood: use None (raw counts), 'T' "
            "(log1p-normalized values), 'A' (normalized values + per-cell totals in obs) or "
            "'bulk' (bulk RNA-seq counts or TPM)"
        ) from None


DEFAULT_BLOCK_ROWS = 8192
SCALE = 1e4  # the normalization target of the model's values


@dataclass(frozen=True)
class ModelBlock:
    """A block of cells as the model takes them.

    Attributes
    ----------
    start
        Position of the first cell among the cells iterated (rows of the input, or positions
        in the selected ``rows``).
    values
        ``(n, 19264)`` CSR of model-scale values (``log1p`` of normalized expression), sorted
        indices, no explicit zeros.
    S
        ``(n,)`` float32 log10 depth of each cell's input.
    """

    start: int
    values: sp.csr_matrix
    S: np.ndarray

    @property
    def n_cells(self) -> int:
        return self.values.shape[0]

    @property
    def stop(self) -> int:
        return self.start + self.n_cells

    def lengths(self) -> np.ndarray:
        """Nonzero genes per cell."""
        return np.diff(self.values.indptr)

    def batch(self, rows: np.ndarray | None = None) -> NormalizedCells:
        """The model inputs of ``rows`` (positions within the block; default all)."""
        X = self.values if rows is None else self.values[rows]
        S = self.S if rows is None else self.S[rows]
        return NormalizedCells(X.indices, X.data, X.indptr, S)


def row_totals(block: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``(n,)`` float64 row sums of a dense or sparse block."""
    return np.asarray(block.sum(axis=1), dtype=np.float64).reshape(-1)


def _scale_rows(X: sp.csr_matrix, factors: np.ndarray) -> sp.csr_matrix:
    """``X`` with row i multiplied by ``factors[i]`` (float64)."""
    out = sp.csr_matrix(X, dtype=np.float64, copy=True)
    out.data *= np.repeat(factors, np.diff(out.indptr))
    return out


def _log1p_normalized(raw: sp.spmatrix | np.ndarray, totals: np.ndarray, target: float):
    """``log1p(raw / totals[row] · target)`` as a float64 CSR (zero-total rows stay zero)."""
    factors = np.where(totals > 0, target / np.where(totals > 0, totals, 1.0), 0.0)
    out = _scale_rows(sp.csr_matrix(raw), factors)
    out.data = np.log1p(out.data)
    return out


def _model_block(
    start: int,
    block,
    mapping: GeneMapping,
    mode: InputMode,
    depth_total: DepthTotal,
    totals: np.ndarray | None,
    bulk_target: float | None,
) -> ModelBlock:
    mapped = mapping.apply(block)  # (n, 19264) input values, collisions summed
    source = block if depth_total == "all_genes" else mapped
    if mode == "counts":
        return counts_block(mapped, row_totals(source), start)
    if mode == "T":
        values = sp.csr_matrix(mapped, dtype=np.float64)
        S = depth_token(row_totals(source))
    elif mode == "A":
        assert totals is not None
        values = sp.csr_matrix(mapped, dtype=np.float64)
        S = depth_token(totals)
    else:  # bulk
        assert bulk_target is not None
        total = row_totals(source)
        values = _log1p_normalized(mapped, total, bulk_target)
        S = depth_token(row_totals(_log1p_normalized(source, total, bulk_target)))
    return _as_block(start, values, S)


def _as_block(start: int, values: sp.spmatrix, S: np.ndarray) -> ModelBlock:
    values = sp.csr_matrix(values, dtype=np.float32)
    values.eliminate_zeros()
    values.sort_indices()
    return ModelBlock(start, values, np.asarray(S, dtype=np.float32))


def counts_block(X: sp.spmatrix, total_counts: np.ndarray, start: int = 0) -> ModelBlock:
    """Model inputs of raw counts over the vocabulary (``n × 19264``) with their totals."""
    total = np.asarray(total_counts, dtype=np.float64).reshape(-1)
    return _as_block(start, _log1p_normalized(X, total, SCALE), depth_token(total))


def iter_model_blocks(
    X,
    mapping: GeneMapping,
    *,
    mode: InputMode = "counts",
    depth_total: DepthTotal = "all_genes",
    rows: np.ndarray | None = None,
    totals: np.ndarray | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> Iterator[ModelBlock]:
    """Row blocks of ``X`` (cells × input genes) as model inputs.

    Parameters
    ----------
    X
        Dense array, scipy sparse matrix, or a backed h5ad matrix (read block by block).
    mapping
        Input genes → vocabulary (``GeneVocab.load().map(var_names)``).
    mode
        Input mode (see the module docstring).
    depth_total
        Which genes a cell's total runs over: ``all_genes`` or ``vocab_genes``.
    rows
        Sorted row indices to read (default all); ``ModelBlock.start`` then counts positions in
        ``rows``.
    totals
        Mode ``A``: each cell's total count, one per row of ``X``.
    """
    if mode == "A":
        if totals is None or len(totals) != X.shape[0]:
            raise ValueError(
                "pre_normalized='A' needs one total count per cell (the obs column named by "
                "total_counts_key)"
            )
        totals = np.asarray(totals, dtype=np.float64)
    bulk_target = (
        _median_total(X, mapping, depth_total, rows, block_rows) if mode == "bulk" else None
    )
    for start, block, picked in _row_blocks(X, rows, block_rows):
        yield _model_block(
            start,
            block,
            mapping,
            mode,
            depth_total,
            None if totals is None else totals[picked],
            bulk_target,
        )


def _row_blocks(X, rows: np.ndarray | None, block_rows: int):
    """``(start, block, row indices)`` over all rows or over the selected ``rows``."""
    if rows is None:
        for start, block in iter_row_blocks(X, block_rows):
            yield start, block, np.arange(start, start + block.shape[0])
        return
    if sp.issparse(X) and not isinstance(X, sp.csr_matrix | sp.csr_array):
        X = sp.csr_matrix(X)
    for start in range(0, rows.size, block_rows):
        picked = rows[start : start + block_rows]
        yield start, X[picked], picked


def _median_total(X, mapping, depth_total, rows, block_rows) -> float:
    """Median total over the cells (scanpy ``normalize_total``'s default target), one pass."""
    totals = [
        row_totals(block if depth_total == "all_genes" else mapping.apply(block))
        for _, block, _ in _row_blocks(X, rows, block_rows)
    ]
    all_totals = np.concatenate(totals)
    positive = all_totals[all_totals > 0]
    return float(np.median(positive)) if positive.size else 1.0


# ------------------------------------------------------------------------------ prepare once
_VALUE_KIND = {"counts": "counts", "T": "normalized", "A": "normalized", "bulk": "bulk"}


@dataclass(frozen=True)
class PreparedInput:
    """An AnnData validated and gene-mapped once, ready for any number of inference calls.

    Made by :func:`prepare`; :func:`scfm.embed`, :func:`scfm.gene_embeddings` and
    :func:`scfm.enhance` accept it in place of the AnnData, so a user who calls all three
    validates once.
    """

    adata: Any
    layer: str | None
    mode: InputMode
    gene_matching: GeneMatching
    report: ValidationReport
    mapping: GeneMapping
    n_standard_mapped: int  # input genes the standard rules map (exact names + the rest)
    totals: np.ndarray | None = None  # mode A: one total count per cell

    @property
    def X(self):
        """The matrix inference reads (``X`` or the layer)."""
        return layer_matrix(self.adata, self.layer)[0]

    @property
    def n_obs(self) -> int:
        return self.adata.n_obs

    def blocks(
        self,
        depth_total: DepthTotal,
        rows: np.ndarray | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> Iterator[ModelBlock]:
        """Model-input blocks (see :func:`iter_model_blocks`)."""
        return iter_model_blocks(
            self.X,
            self.mapping,
            mode=self.mode,
            depth_total=depth_total,
            rows=rows,
            totals=self.totals,
            block_rows=block_rows,
        )

    def record(self) -> dict[str, Any]:
        """What inference records about the input and its gene mapping."""
        mapping = self.mapping.report
        n_exact = int(self.mapping.exact.sum())
        return {
            "input": {
                "n_cells": self.report.n_cells,
                "n_genes": self.report.n_genes,
                "n_empty_cells": self.report.n_empty_cells,
                "layer": self.layer or "X",
                "pre_normalized": self.mode,
            },
            "gene_mapping": {
                "matching": self.gene_matching,
                "n_input": mapping.n_input,
                "n_mapped": mapping.n_mapped,
                "fraction_mapped": float(mapping.fraction_mapped),
                "n_vocab_covered": mapping.n_vocab_covered,
                "n_collisions": mapping.n_collisions,
                "n_exact_names": n_exact,
                # genes the standard rules (case, Ensembl ids, aliases) add to exact names
                "n_added_beyond_exact": self.n_standard_mapped - n_exact,
                **{f"by_rule_{k}": v for k, v in mapping.by_rule.items()},
            },
        }


def prepare(
    adata,
    *,
    layer: str | None = None,
    pre_normalized: Any = None,
    gene_matching: GeneMatching = "standard",
    total_counts_key: str = "total_counts",
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> PreparedInput:
    """Validate an AnnData and map its genes once (scvi-tools' ``setup_anndata`` for scfm).

    Parameters
    ----------
    adata
        In memory or backed. Raw counts unless ``pre_normalized`` declares otherwise.
    layer
        Layer holding the values; default ``X``; ``"raw"`` means ``adata.raw``.
    pre_normalized
        None (raw counts), ``"T"``, ``"A"`` or ``"bulk"``: see :mod:`scfm.inference.settings`.
    gene_matching
        ``standard`` (symbols, Ensembl ids, aliases) or ``exact`` (official: exact names only).
    total_counts_key
        Mode ``A``: the obs column with each cell's total count.

    Raises
    ------
    InputValidationError
        Values that do not fit the declared kind, duplicated names, wrong species, a missing
        layer or totals column, … (each message names the fix).
    """
    mode = check_input_mode(pre_normalized)
    if gene_matching not in ("standard", "exact"):
        raise ValueError(f"gene_matching must be 'standard' or 'exact', got {gene_matching!r}")
    layer_matrix(adata, layer)  # a missing layer or .raw is named before any work
    totals = None
    if mode == "A":
        if total_counts_key not in adata.obs:
            raise InputValidationError(
                f"pre_normalized='A' reads each cell's total count from adata.obs"
                f"[{total_counts_key!r}], which does not exist: add the raw totals there or "
                "name the column with total_counts_key"
            )
        totals = np.asarray(adata.obs[total_counts_key], dtype=np.float64)
        if not np.isfinite(totals).all() or (totals <= 0).any():
            raise InputValidationError(
                f"adata.obs[{total_counts_key!r}] must hold positive finite total counts "
                f"(min {np.nanmin(totals):g})"
            )
    checked = validate_anndata(
        adata, layer=layer, min_mapped_fraction=min_mapped_fraction, kind=_VALUE_KIND[mode]
    )
    for warning in checked.report.warnings:
        log.warning(warning)
    mapping = checked.mapping
    n_standard = int(mapping.mapped.sum())
    if gene_matching == "exact":
        mapping = mapping.exact_only()
        if not mapping.mapped.any():
            raise InputValidationError(
                "no input gene name equals a vocabulary name exactly (gene_matching='exact'): "
                "use gene_matching='standard' to map symbols case-insensitively, Ensembl ids "
                "and aliases"
            )
    return PreparedInput(
        adata, layer, mode, gene_matching, checked.report, mapping, n_standard, totals
    )
