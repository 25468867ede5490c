"""Cell quality control: which cells enter the corpus, and why the others do not.

Defaults follow scFoundation (keep cells with more than 200 expressed genes); the other filters
are off unless configured. Every dropped cell is counted under exactly one reason: the first
filter of :data:`DROP_REASONS` (in that order) that it fails, so ``kept + sum(dropped) == in``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from scfm.cli_options import option

DROP_REASONS: tuple[str, ...] = (
    "no_counts",  # zero total counts
    "min_genes",  # expressed genes (all input genes) <= min_genes
    "max_genes",  # expressed genes > max_genes
    "min_counts",  # total counts < min_counts
    "max_mito_fraction",  # mitochondrial fraction of counts > max_mito_fraction
    "no_vocab_genes",  # nothing left after restriction to the 19,264-gene vocabulary
)


@dataclass(frozen=True)
class QCConfig:
    """Cell filters. ``None`` switches a filter off.

    Attributes
    ----------
    min_genes
        Keep cells with **more than** this many expressed genes (counted over all input genes,
        before vocabulary restriction). scFoundation: 200.
    max_genes
        Keep cells with at most this many expressed genes (doublet guard).
    min_counts
        Keep cells with at least this many total counts (all input genes).
    max_mito_fraction
        Keep cells whose mitochondrial (``MT-``) fraction of counts is at most this.
    """

    min_genes: int | None = option(200, "Keep cells with more than this many genes.")
    max_genes: int | None = option(None, "Keep cells with at most this many genes.")
    min_counts: float | None = option(None, "Keep cells with at least these counts.")
    max_mito_fraction: float | None = option(
        None, "Keep cells with mito fraction <= this.", flags=("--max-mito",)
    )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CellStats:
    """Per-cell numbers QC looks at (all arrays of length n_cells)."""

    total_counts: np.ndarray  # all input genes
    n_genes_input: np.ndarray  # expressed input genes
    n_genes_vocab: np.ndarray  # expressed vocabulary genes after mapping
    mito_counts: np.ndarray


def drop_reasons(stats: CellStats, cfg: QCConfig) -> np.ndarray:
    """Index into :data:`DROP_REASONS` of each cell's first failing filter, ``-1`` if kept."""
    n = len(stats.total_counts)
    reason = np.full(n, -1, dtype=np.int8)
    total = stats.total_counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mito_frac = np.where(total > 0, stats.mito_counts / np.maximum(total, 1e-300), 0.0)
    checks = (
        total <= 0,
        stats.n_genes_input <= cfg.min_genes if cfg.min_genes is not None else None,
        stats.n_genes_input > cfg.max_genes if cfg.max_genes is not None else None,
        total < cfg.min_counts if cfg.min_counts is not None else None,
        mito_frac > cfg.max_mito_fraction if cfg.max_mito_fraction is not None else None,
        stats.n_genes_vocab == 0,
    )
    for code, failed in enumerate(checks):
        if failed is None:
            continue
        reason[(reason < 0) & failed] = code
    return reason


def count_reasons(reason: np.ndarray) -> dict[str, int]:
    """``{reason: n_cells}`` for every reason in :data:`DROP_REASONS` (zeros included)."""
    counts = np.bincount(reason[reason >= 0].astype(np.int64), minlength=len(DROP_REASONS))
    return {name: int(c) for name, c in zip(DROP_REASONS, counts, strict=True)}
