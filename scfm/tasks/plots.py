"""Figures of downstream results: confusion matrices, method comparison, per-class F1,
gene-module enrichment. Each function returns a matplotlib Figure (Agg backend, no display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _plt():
    from scfm.plotting import pyplot

    return pyplot()


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


def scib_results_figure(
    table: pd.DataFrame,
    columns: Sequence[str],
    names: Mapping[str, str],
    *,
    title: str = "",
    aggregates: Sequence[str] = ("bio_conservation", "batch_correction", "total"),
):
    """scIB-style results table: one row per representation (best ``total`` first), a coloured
    disc per metric (colour ranks the representations within the column; the value is written
    in it) and bars for the aggregate scores, grouped under bio conservation / batch correction /
    aggregate score headers."""
    plt = _plt()
    from scfm.tasks.scib import BATCH_METRICS, BIO_METRICS

    t = table.sort_values("total", ascending=False, kind="stable").reset_index(drop=True)
    cols = list(columns)
    n_rows, name_w = len(t), 3.2
    fig_w = name_w + 1.0 * len(cols) + 0.4
    fig, ax = plt.subplots(figsize=(fig_w, 1.5 + 0.42 * n_rows), layout="constrained")
    ax.set_xlim(0, name_w + len(cols))
    ax.set_ylim(n_rows - 0.5, -2.2)
    ax.axis("off")
    cmap, bar_cmap = plt.get_cmap("PRGn"), plt.get_cmap("YlGnBu")
    for i, r in t.iterrows():
        ax.text(0.05, i, f"{r['representation']}", va="center", ha="left", fontsize=8,
                weight="bold" if i == 0 else "normal")  # fmt: skip
        ax.text(name_w - 0.1, i, r["kind"], va="center", ha="right", fontsize=7, color="0.4")
        if i:
            ax.axhline(i - 0.5, color="0.85", lw=0.6, ls=(0, (1, 4)))
    groups: dict[str, list[int]] = {}
    for j, c in enumerate(cols):
        x = name_w + j + 0.5
        group = (
            "Aggregate score" if c in aggregates
            else "Bio conservation" if c in BIO_METRICS
            else "Batch correction" if c in BATCH_METRICS else ""
        )  # fmt: skip
        groups.setdefault(group, []).append(j)
        ax.text(x, -0.85, names.get(c, c).replace(" ", "\n", 1), ha="center", va="center",
                fontsize=7)  # fmt: skip
        vals = t[c].to_numpy(dtype=float)
        finite = np.isfinite(vals)
        lo, hi = (vals[finite].min(), vals[finite].max()) if finite.any() else (0.0, 1.0)
        for i, v in enumerate(vals):
            if not np.isfinite(v):
                ax.text(x, i, "–", ha="center", va="center", fontsize=8, color="0.5")
            elif c in aggregates:
                ax.barh(i, 0.9 * max(v, 0.0), left=x - 0.45, height=0.6,
                        color=bar_cmap(0.25 + 0.75 * max(min(v, 1.0), 0.0)))  # fmt: skip
                ax.text(x - 0.4, i, f"{v:.2f}", ha="left", va="center", fontsize=7)
            else:
                rank = 0.5 if hi - lo < 1e-12 else (v - lo) / (hi - lo)
                colour = cmap(0.15 + 0.7 * rank)
                ax.scatter([x], [i], s=330, color=colour, edgecolors="none")
                ax.text(x, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if abs(rank - 0.5) > 0.35 else "black")  # fmt: skip
    for group, js in groups.items():
        x0, x1 = name_w + min(js) + 0.05, name_w + max(js) + 0.95
        ax.plot([x0, x1], [-1.45, -1.45], color="0.3", lw=0.8)
        ax.text((x0 + x1) / 2, -1.75, group, ha="center", va="center", fontsize=8, weight="bold")
        if group == "Aggregate score":
            ax.axvline(x0 - 0.05, color="0.3", lw=0.8)
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    return fig


def umap_grid(
    coords: Mapping[str, np.ndarray],
    colours: Mapping[str, np.ndarray],
    *,
    title: str = "",
    panel: float = 3.0,
):
    """UMAPs side by side: one column per representation, one row per colouring (e.g. label,
    batch); every panel of a row uses the same colour per category, legend on the right."""
    plt = _plt()
    reps, rows = list(coords), list(colours)
    fig, axes = plt.subplots(
        len(rows), len(reps), figsize=(panel * len(reps) + 2.2, panel * len(rows) + 0.4),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for r, key in enumerate(rows):
        values = np.asarray(colours[key]).astype(str)
        cats, counts = np.unique(values, return_counts=True)
        cats = cats[np.argsort(-counts, kind="stable")]
        cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
        size = float(np.clip(12000 / max(values.size, 1), 1.0, 10.0))
        for c, rep in enumerate(reps):
            ax, xy = axes[r, c], np.asarray(coords[rep])
            for k, cat in enumerate(cats):
                sel = values == cat
                ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(k % cmap.N), linewidths=0,
                           alpha=0.8, label=f"{cat} ({sel.sum():,})", rasterized=True)  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(rep, fontsize=8)
            if c == 0:
                ax.set_ylabel(key, fontsize=9)
        axes[r, -1].legend(title=key, fontsize=6, title_fontsize=7, markerscale=2.5, frameon=False,
                           bbox_to_anchor=(1.02, 1), loc="upper left")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
