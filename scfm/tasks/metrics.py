"""Classification metrics from a confusion matrix: accuracy, macro-F1 (the paper's metric),
per-class F1.

Computed here from counts (not by calling scikit-learn) so the tests can check them against an
independent scikit-learn computation from the saved predictions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class ClassificationMetrics:
    """Metrics of one method on one test set.

    Attributes
    ----------
    accuracy
        Fraction of all test cells predicted correctly (rare and unseen classes included).
    macro_f1
        Unweighted mean F1 over ``scored`` classes (see ``scfm.tasks.labelled.class_table``).
    per_class_f1
        F1 of every class in ``labels`` (NaN for a class with no test cells and no predictions).
    labels
        Row / column order of ``confusion`` (true × predicted).
    scored
        Classes averaged by ``macro_f1``.
    """

    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: np.ndarray
    labels: list[str]
    scored: list[str]
    n_test: int

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n_test": self.n_test}


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted, in ``labels`` order."""
    index = {c: i for i, c in enumerate(labels)}
    t = np.array([index[c] for c in y_true], dtype=np.int64)
    p = np.array([index[c] for c in y_pred], dtype=np.int64)
    k = len(labels)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2·TP / (2·TP + FP + FN); 0 where the class has TP+FP+FN > 0 and no TP,
    NaN where it never occurs (no test cells, never predicted)."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    scored: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> ClassificationMetrics:
    """Accuracy, macro-F1 over ``scored`` classes, per-class F1 and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred
        Labels of the test cells.
    scored
        Classes macro-F1 averages over; default: every class with test cells.
    labels
        Class order of the outputs; default: sorted union of true, predicted and scored labels.
    """
    y_true = np.asarray(y_true, dtype=str)
    y_pred = np.asarray(y_pred, dtype=str)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"need equally long, non-empty label arrays, got {y_true.size}, {y_pred.size}"
        )
    if scored is None:
        scored = sorted(set(y_true))
    all_labels = sorted(set(y_true) | set(y_pred) | set(scored))
    if labels is not None:
        extra = [c for c in all_labels if c not in set(labels)]
        all_labels = list(labels) + extra
    cm = confusion_matrix(y_true, y_pred, all_labels)
    f1 = f1_from_confusion(cm)
    per_class = dict(zip(all_labels, f1.tolist(), strict=True))
    scored = list(scored)
    macro = float(np.mean([per_class[c] for c in scored])) if scored else float("nan")
    return ClassificationMetrics(
        accuracy=float(np.trace(cm) / cm.sum()),
        macro_f1=macro,
        per_class_f1=per_class,
        confusion=cm,
        labels=all_labels,
        scored=scored,
        n_test=int(y_true.size),
    )


def slug(text: str) -> str:
    """A metric-key-safe name: ``LR on PCA(50) of HVGs`` → ``lr_on_pca_50_of_hvgs``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ------------------------------------------------------------------------------ binary scores
def _binary_inputs(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"need two equally long 1-D arrays, got shapes {y.shape} and {s.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    return y, s


def binary_auroc(y_true, score) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties); NaN when only one
    class is present."""
    y, s = _binary_inputs(y_true, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true, score) -> float:
    """Area under the precision-recall curve as the step sum ``Σ (R_k - R_{k-1}) P_k`` over the
    distinct score thresholds (scikit-learn's ``average_precision_score``); NaN without
    positives."""
    y, s = _binary_inputs(y_true, score)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
