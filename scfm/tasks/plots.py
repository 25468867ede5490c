"""Figures of downstream results: confusion matrices, method comparison, per-class F1,
gene-module enrichment. Each function returns a matplotlib Figure (Agg backend, no display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(cm: np.ndarray, labels: Sequence[str], title: str):
    """Row-normalized confusion matrix (colour) with the cell counts written in."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), layout="constrained")
    _draw_confusion(ax, cm, labels, title)
    return fig


def _draw_confusion(ax, cm: np.ndarray, labels: Sequence[str], title: str) -> None:
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    n = len(labels)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if frac[i, j] > 0.5 else "black",
                )


def confusion_grid(confusions: Mapping[str, tuple[np.ndarray, Sequence[str]]]):
    """One confusion matrix per method, side by side."""
    plt = _plt()
    k = len(confusions)
    cols = min(3, k)
    rows = math.ceil(k / cols)
    n = max(len(lab) for _, lab in confusions.values())
    size = 1.5 + 0.45 * n
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * size, rows * size), squeeze=False, layout="constrained"
    )
    for ax, (name, (cm, labels)) in zip(axes.flat, confusions.items(), strict=False):
        _draw_confusion(ax, cm, labels, name)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    return fig


def comparison_figure(table: pd.DataFrame, title: str):
    """Horizontal bars of macro-F1 and accuracy per method, wall time written beside."""
    plt = _plt()
    t = table.sort_values("macro_f1", ascending=True, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.45 * len(t)), layout="constrained")
    y = np.arange(len(t))
    ax.barh(y + 0.2, t["macro_f1"], height=0.4, label="macro-F1", color="#3b75af")
    ax.barh(y - 0.2, t["accuracy"], height=0.4, label="accuracy", color="#a6c8e5")
    ax.set_yticks(y, t["method"], fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("score on test cells")
    for yi, (f1, sec) in enumerate(zip(t["macro_f1"], t["seconds"], strict=True)):
        ax.text(f1 + 0.01, yi + 0.2, f"{f1:.3f}  ({sec:.1f} s)", va="center", fontsize=7)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=10)
    return fig


def per_class_figure(per_class: pd.DataFrame, title: str):
    """Heatmap of F1, methods × classes (``per_class``: index = method, columns = classes)."""
    plt = _plt()
    fig, ax = plt.subplots(
        figsize=(3 + 0.6 * per_class.shape[1], 2.5 + 0.4 * per_class.shape[0]), layout="constrained"
    )
    im = ax.imshow(per_class.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(per_class.shape[1]), per_class.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(per_class.shape[0]), per_class.index, fontsize=7)
    fig.colorbar(im, ax=ax, label="F1")
    ax.set_title(title, fontsize=10)
    return fig


def enrichment_heatmap(enrichment: pd.DataFrame, *, top: int = 25, fdr: float = 0.05):
    """−log10 FDR of the most significant gene sets (rows) per gene module (columns)."""
    plt = _plt()
    sig = enrichment.sort_values("fdr").drop_duplicates("gene_set").head(top)["gene_set"]
    sets = list(sig) or list(enrichment.sort_values("p_value")["gene_set"].head(top))
    sub = enrichment[enrichment["gene_set"].isin(sets)]
    mat = sub.pivot_table(index="gene_set", columns="module", values="fdr", aggfunc="min")
    mat = -np.log10(mat.reindex(sets).clip(lower=1e-300).fillna(1.0))
    fig, ax = plt.subplots(
        figsize=(2.5 + 0.5 * mat.shape[1], 1.2 + 0.3 * mat.shape[0]), layout="constrained"
    )
    im = ax.imshow(mat.to_numpy(), cmap="magma_r", aspect="auto", vmin=0)
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns], fontsize=7)
    ax.set_yticks(range(mat.shape[0]), [s[:50] for s in mat.index], fontsize=6)
    ax.set_xlabel("gene module")
    fig.colorbar(im, ax=ax, label="−log10 FDR")
    ax.set_title(f"gene-set enrichment of modules (FDR < {fdr} marked)", fontsize=9)
    thr = -math.log10(fdr)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if mat.iat[i, j] > thr:
                ax.text(j, i, "*", ha="center", va="center", fontsize=8, color="white")
    return fig
