"""Figures of perturbation-prediction results: the method comparison and predicted vs observed
change on the DE genes (one panel per method). Each function returns a matplotlib Figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from scfm.tasks.perturb_metrics import pearson
from scfm.tasks.plots import _plt

KIND_COLOURS = {"scfm": "#3b75af", "control": "#a6c8e5", "gears": "#e1812c", "baseline": "#7f7f7f"}


def gears_comparison_figure(table: pd.DataFrame, title: str):
    """Bars of top-20-DE MSE and Pearson delta per method (mean ± sd over split seeds)."""
    plt = _plt()
    t = table.sort_values("mse_de", ascending=False, kind="stable")
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(t)), layout="constrained")
    y = np.arange(len(t))
    colours = [KIND_COLOURS.get(k, "#999999") for k in t["kind"]]
    for ax, metric, label in (
        (axes[0], "mse_de", "top-20 DE MSE (lower is better)"),
        (axes[1], "pearson_delta", "Pearson delta, all genes (higher is better)"),
    ):
        values = t[metric].to_numpy(dtype=float)
        err = t.get(f"{metric}_sd", pd.Series(np.zeros(len(t)))).to_numpy(dtype=float)
        ax.barh(y, np.nan_to_num(values), xerr=np.nan_to_num(err), color=colours, capsize=2)
        for yi, v in zip(y, values, strict=True):
            ax.text(0, yi, "  n/a" if np.isnan(v) else f"  {v:.3f}", va="center", fontsize=7)
        ax.set_yticks(y, t["method"] if ax is axes[0] else [""] * len(t), fontsize=8)
        ax.set_xlabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def change_scatter_grid(changes: pd.DataFrame, *, max_points: int = 4000, seed: int = 0):
    """Predicted vs observed change from the control on the DE genes of the held-out
    perturbations: one panel per method (``changes``: method, true_change, pred_change)."""
    plt = _plt()
    methods = list(dict.fromkeys(changes["method"]))
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False, layout="constrained"
    )
    lim = float(np.nanmax(np.abs(changes[["true_change", "pred_change"]].to_numpy()))) * 1.05
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    rng = np.random.default_rng(seed)
    for ax, method in zip(axes.flat, methods, strict=False):
        sub = changes[changes["method"] == method]
        if len(sub) > max_points:
            sub = sub.iloc[np.sort(rng.choice(len(sub), max_points, replace=False))]
        t, p = sub["true_change"].to_numpy(), sub["pred_change"].to_numpy()
        ax.scatter(t, p, s=4, alpha=0.4, color="#3b75af", linewidths=0)
        ax.plot([-lim, lim], [-lim, lim], color="#999999", lw=0.8)
        ax.axhline(0, color="#dddddd", lw=0.6)
        ax.axvline(0, color="#dddddd", lw=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        r = pearson(t, p)
        ax.set_title(f"{method}\nr = {'n/a' if np.isnan(r) else f'{r:.2f}'}", fontsize=8)
        ax.set_xlabel("observed change (DE genes)", fontsize=7)
        ax.set_ylabel("predicted change", fontsize=7)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    return fig
