"""Regression metrics of drug-response predictions: overall and per group (drug, tissue).

Computed here with numpy (ranks by ``pandas.Series.rank``, average ties) so the tests can check
them against an independent scipy computation. Pearson / Spearman of a constant vector are NaN
(a predictor that gives every pair of a drug the same value has no within-drug correlation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MIN_GROUP_PAIRS = 10  # groups with fewer test pairs get no per-group correlation


def pearson(y: np.ndarray, p: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is constant or shorter than 2."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.size < 2 or np.ptp(y) == 0 or np.ptp(p) == 0:
        return float("nan")
    dy, dp = y - y.mean(), p - p.mean()
    return float((dy * dp).sum() / np.sqrt((dy * dy).sum() * (dp * dp).sum()))


def spearman(y: np.ndarray, p: np.ndarray) -> float:
    """Spearman correlation (Pearson of average ranks)."""
    ry = pd.Series(np.asarray(y, dtype=np.float64)).rank(method="average").to_numpy()
    rp = pd.Series(np.asarray(p, dtype=np.float64)).rank(method="average").to_numpy()
    return pearson(ry, rp)


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    d = np.asarray(y, dtype=np.float64) - np.asarray(p, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d))) if d.size else float("nan")


@dataclass
class RegressionMetrics:
    """Metrics of one method on one test set (``within_drug_pearson``: mean per-drug Pearson over
    drugs with at least :data:`MIN_GROUP_PAIRS` test pairs and a defined correlation)."""

    pearson: float
    spearman: float
    rmse: float
    n: int
    within_drug_pearson: float = float("nan")
    n_drugs_scored: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def regression_metrics(
    y: np.ndarray, p: np.ndarray, drugs: np.ndarray | None = None
) -> RegressionMetrics:
    """Overall Pearson / Spearman / RMSE, and the within-drug mean Pearson when ``drugs`` given."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"need equally long, non-empty arrays, got {y.size} and {p.size}")
    m = RegressionMetrics(pearson(y, p), spearman(y, p), rmse(y, p), int(y.size))
    if drugs is not None:
        per = grouped_metrics(y, p, drugs)
        scored = per["pearson"].dropna()
        m.within_drug_pearson = float(scored.mean()) if len(scored) else float("nan")
        m.n_drugs_scored = int(len(scored))
    return m


def grouped_metrics(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, min_pairs: int = MIN_GROUP_PAIRS
) -> pd.DataFrame:
    """One row per group: ``group, n, pearson, spearman, rmse`` (correlations NaN under
    ``min_pairs`` pairs)."""
    df = pd.DataFrame({"y": y, "p": p, "g": np.asarray(groups)})
    rows = []
    for g, sub in df.groupby("g", sort=True):
        n = len(sub)
        ok = n >= min_pairs
        rows.append(
            {
                "group": g,
                "n": n,
                "pearson": pearson(sub["y"], sub["p"]) if ok else float("nan"),
                "spearman": spearman(sub["y"], sub["p"]) if ok else float("nan"),
                "rmse": rmse(sub["y"], sub["p"]),
            }
        )
    return pd.DataFrame(rows, columns=["group", "n", "pearson", "spearman", "rmse"])
