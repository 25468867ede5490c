"""Perturbation-prediction metrics as GEARS reports them, per perturbation and averaged.

All metrics compare the *mean* predicted expression of a perturbation with the mean observed
expression of its cells (log-normalized), with the control mean as reference:

* ``mse_de`` — MSE over the perturbation's top-20 DE genes ("Top 20 DE MSE", the number the
  scFoundation paper reports: 0.2335 → 0.1827 on Norman); ``mse`` over all genes;
* ``pearson_delta`` / ``pearson_delta_de`` — Pearson of predicted vs observed change from the
  control mean, all genes / top-20 DE genes (GEARS' headline metric); ``pearson`` on raw means;
* ``direction_de`` — fraction of the DE genes whose predicted change has the observed sign;
* ``l2_top`` — Euclidean distance over the ``n_top`` (1,000) genes most expressed in the control
  (the metric of Ahlmann-Eltze et al.).

A prediction without any change (the no-change baseline) has an undefined Pearson delta: NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

METRICS = (
    "mse_de",
    "pearson_delta",
    "pearson_delta_de",
    "direction_de",
    "mse",
    "pearson",
    "l2_top",
)
LOWER_IS_BETTER = {"mse_de", "mse", "l2_top"}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def top_expressed(control_mean: np.ndarray, n_top: int = 1000) -> np.ndarray:
    """Indices of the ``n_top`` genes with the highest control mean (all genes if fewer)."""
    order = np.argsort(-np.asarray(control_mean), kind="stable")
    return np.sort(order[:n_top])


def perturbation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    control_mean: np.ndarray,
    de_idx: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    n_top: int = 1000,
) -> pd.DataFrame:
    """One row of metrics per perturbation.

    Parameters
    ----------
    pred, truth
        ``(n_perturbations, n_genes)`` predicted and observed mean expression.
    control_mean
        ``(n_genes,)`` mean expression of the control cells.
    de_idx
        ``(n_perturbations, n_de)`` gene indices of each perturbation's DE genes.
    """
    pred = np.atleast_2d(np.asarray(pred, np.float64))
    truth = np.atleast_2d(np.asarray(truth, np.float64))
    ctrl = np.asarray(control_mean, np.float64)
    top = top_expressed(ctrl, n_top)
    rows = []
    for i in range(pred.shape[0]):
        p, t, de = pred[i], truth[i], np.asarray(de_idx[i])
        dp, dt = p - ctrl, t - ctrl
        rows.append(
            {
                "mse_de": float(np.mean((p[de] - t[de]) ** 2)),
                "pearson_delta": pearson(dp, dt),
                "pearson_delta_de": pearson(dp[de], dt[de]),
                "direction_de": float(np.mean(np.sign(dp[de]) == np.sign(dt[de]))),
                "mse": float(np.mean((p - t) ** 2)),
                "pearson": pearson(p, t),
                "l2_top": float(np.sqrt(np.sum((p[top] - t[top]) ** 2))),
            }
        )
    out = pd.DataFrame(rows, columns=list(METRICS))
    if names is not None:
        out.insert(0, "perturbation", list(names))
    return out


def mean_metrics(per_perturbation: pd.DataFrame) -> dict[str, float]:
    """Average of each metric over perturbations (NaN ignored; NaN if all are NaN)."""
    out = {}
    for m in METRICS:
        values = per_perturbation[m].to_numpy(dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[m] = float(np.nanmean(values)) if values.size else float("nan")
    return out
