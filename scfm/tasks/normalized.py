"""Opt-in fallback for files that hold only log-normalized values: reconstruct the raw counts.

Many published h5ad files keep only ``X = log1p(counts / total · s)`` (``normalize_total`` +
``log1p``) and the per-cell total in obs (``n_counts``, ``total_counts``). When ``total`` is
known, the counts are recoverable exactly: ``counts = expm1(X) · total / s``, which must come out
as integers. The scale ``s`` (1e4 by default in scanpy, but not always) is estimated from the data:
in each cell the smallest nonzero value is almost always a count of 1, so
``s = expm1(min nonzero) · total``; the median over cells is used.

The reconstruction is accepted only when the rounding residuals are small (99th percentile below
``max_residual``), i.e. when the file really is ``log1p(counts / total · s)`` with those totals;
anything else (scaled, batch-corrected, totals over other genes with another scale) is refused
with the reason. This is how ``shared/data``'s ``pbmc68k_reduced_counts.h5ad`` was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from scfm.data.validate import InputValidationError


@dataclass(frozen=True)
class Reconstruction:
    """How well counts were recovered."""

    scale: float  # the estimated normalization target s
    residual_p99: float  # 99th percentile of |value − nearest integer| before rounding
    residual_max: float
    n_cells: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"scale {self.scale:.6g}, rounding residual p99 {self.residual_p99:.2g} "
            f"(max {self.residual_max:.2g}) over {self.n_cells:,} cells"
        )


def reconstruct_counts(
    X, totals: np.ndarray, *, scale: float | None = None, max_residual: float = 0.1
) -> tuple[sp.csr_matrix, Reconstruction]:
    """Integer counts from ``log1p(counts / total · scale)`` values.

    Parameters
    ----------
    X
        Cells × genes log-normalized values (dense or sparse, non-negative).
    totals
        ``(n_cells,)`` each cell's total count used in the normalization.
    scale
        The normalization target; estimated from the data when None.
    max_residual
        Refuse when the 99th percentile of the rounding residual exceeds this.

    Raises
    ------
    InputValidationError
        Negative values (scaled data cannot be inverted), totals that are not positive, or
        residuals showing the values are not ``log1p(counts / total · scale)``.
    """
    X = sp.csr_matrix(X, dtype=np.float64)
    X.eliminate_zeros()
    totals = np.asarray(totals, dtype=np.float64).reshape(-1)
    if totals.size != X.shape[0]:
        raise InputValidationError(f"{totals.size} totals for {X.shape[0]} cells")
    if X.nnz and X.data.min() < 0:
        raise InputValidationError(
            f"the expression matrix contains negative values (min {X.data.min():g}): scaled "
            "data cannot be turned back into counts; pass raw counts or a log1p(normalized) layer"
        )
    if not np.all(np.isfinite(totals)) or np.any(totals <= 0):
        raise InputValidationError("total counts must be positive and finite for every cell")
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    if scale is None:
        mins = np.minimum.reduceat(X.data, X.indptr[:-1][np.diff(X.indptr) > 0])
        has = np.diff(X.indptr) > 0
        scale = float(np.median(np.expm1(mins) * totals[has]))
    values = np.expm1(X.data) * totals[rows] / scale
    residual = np.abs(values - np.rint(values))
    info = Reconstruction(
        scale=scale,
        residual_p99=float(np.quantile(residual, 0.99)) if residual.size else 0.0,
        residual_max=float(residual.max()) if residual.size else 0.0,
        n_cells=X.shape[0],
    )
    if info.residual_p99 > max_residual:
        raise InputValidationError(
            f"cannot reconstruct counts: expm1(X) · total / {scale:.4g} is far from integers "
            f"(99th percentile residual {info.residual_p99:.2f}); the values are not "
            "log1p(counts / total · scale) with these totals. Pass raw counts instead"
        )
    counts = sp.csr_matrix(
        (np.rint(values).astype(np.float32), X.indices.copy(), X.indptr.copy()), shape=X.shape
    )
    counts.eliminate_zeros()
    return counts, info
