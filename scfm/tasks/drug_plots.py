"""Figures of drug-response results: method comparison, per-drug and per-tissue correlation
(DeepCDR); AUROC per method and predicted-sensitivity distributions (SCAD). Each function returns
a matplotlib Figure (Agg backend, no display)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scfm.tasks.plots import _plt


def comparison_figure(table: pd.DataFrame, title: str):
    """Pearson (bar) and within-drug Pearson (dot) per method, one panel per split."""
    plt = _plt()
    splits = list(dict.fromkeys(table["split"]))
    n_methods = table["method"].nunique()
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(4.5 * len(splits) + 2, 1.0 + 0.4 * n_methods),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    methods = list(dict.fromkeys(table["method"]))
    y = np.arange(len(methods))
    for ax, split in zip(axes[0], splits, strict=True):
        t = table[table["split"] == split].set_index("method").reindex(methods)
        ax.barh(y, t["pearson"].fillna(0), color="#3b75af", label="Pearson (all test pairs)")
        ax.plot(t["within_drug_pearson"], y, "o", color="#e07b39", label="mean within-drug Pearson")
        for yi, v in zip(y, t["pearson"], strict=True):
            if np.isfinite(v):
                ax.text(max(v, 0) + 0.01, yi, f"{v:.3f}", va="center", fontsize=7)
        ax.set_xlim(min(0.0, float(np.nanmin(t[["pearson", "within_drug_pearson"]]))), 1.1)
        ax.set_title(split, fontsize=9)
        ax.set_xlabel("correlation with ln(IC50)")
    axes[0][0].set_yticks(y, methods, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def per_drug_figure(per_drug: pd.DataFrame, title: str):
    """Box plots of the per-drug Pearson of every method, one panel per split."""
    plt = _plt()
    splits = list(dict.fromkeys(per_drug["split"]))
    methods = list(dict.fromkeys(per_drug["method"]))
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(4.5 * len(splits) + 2, 1.0 + 0.4 * len(methods)),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, split in zip(axes[0], splits, strict=True):
        sub = per_drug[per_drug["split"] == split]
        values = [sub.loc[sub["method"] == m, "pearson"].dropna().to_numpy() for m in methods]
        ax.boxplot(
            [v if v.size else np.array([np.nan]) for v in values],
            orientation="horizontal",
            widths=0.6,
            flierprops={"markersize": 2},
        )
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(f"{split} ({sub['group'].nunique()} test drugs)", fontsize=9)
        ax.set_xlabel("Pearson within a drug")
    axes[0][0].set_yticks(np.arange(1, len(methods) + 1), methods, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def per_tissue_figure(per_tissue: pd.DataFrame, title: str, *, min_pairs: int = 10):
    """Heatmap of Pearson per tissue (rows) and method (columns), one panel per split."""
    plt = _plt()
    splits = list(dict.fromkeys(per_tissue["split"]))
    mats = []
    for split in splits:
        sub = per_tissue[(per_tissue["split"] == split) & (per_tissue["n"] >= min_pairs)]
        mats.append(sub.pivot_table(index="group", columns="method", values="pearson"))
    n_rows = max((m.shape[0] for m in mats), default=1)
    n_cols = max((m.shape[1] for m in mats), default=1)
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(len(splits) * (2.5 + 0.45 * n_cols) + 1, 2.5 + 0.28 * n_rows),
        squeeze=False,
        layout="constrained",
    )
    im = None
    for ax, split, mat in zip(axes[0], splits, mats, strict=True):
        if mat.empty:
            ax.axis("off")
            ax.set_title(f"{split}: no tissue with ≥ {min_pairs} test pairs", fontsize=9)
            continue
        im = ax.imshow(mat.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=7)
        ax.set_title(split, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes[0][-1], label="Pearson")
    fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------------ SCAD
SENSITIVITY_COLORS = {"sensitive": "#c0392b", "resistant": "#2e6da4"}


def auroc_figure(per_seed: pd.DataFrame, title: str):
    """Mean AUROC (bar) ± SD over seeds and each seed (dots) per method, one panel per drug;
    the dashed line is chance (0.5)."""
    plt = _plt()
    drugs = list(dict.fromkeys(per_seed["drug"]))
    methods = list(dict.fromkeys(per_seed["method"]))
    fig, axes = plt.subplots(
        1,
        len(drugs),
        figsize=(3.2 * len(drugs) + 2.5, 1.0 + 0.45 * len(methods)),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    y = np.arange(len(methods))
    for ax, drug in zip(axes[0], drugs, strict=True):
        sub = per_seed[per_seed["drug"] == drug]
        stats = sub.groupby("method")["auroc"].agg(["mean", "std"]).reindex(methods)
        ax.barh(y, stats["mean"].fillna(0), xerr=stats["std"].fillna(0), color="#8fb3d9")
        for yi, m in enumerate(methods):
            vals = sub.loc[sub["method"] == m, "auroc"].to_numpy()
            ax.plot(vals, np.full(vals.size, yi), "o", color="#1f3b57", ms=3)
        ax.axvline(0.5, color="grey", ls="--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_title(drug, fontsize=9)
        ax.set_xlabel("AUROC (test cells)")
    axes[0][0].set_yticks(y, methods, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def sensitivity_figure(preds: pd.DataFrame, title: str, *, by: str = "label"):
    """Box plots of predicted P(sensitive) of the test cells, one panel per drug (rows) and
    method (columns), grouped by true label (``by="label"``) or by ``group`` (e.g. cell line),
    boxes coloured by the true label."""
    plt = _plt()
    drugs = list(dict.fromkeys(preds["drug"]))
    methods = list(dict.fromkeys(preds["method"]))
    fig, axes = plt.subplots(
        len(drugs),
        len(methods),
        figsize=(2.6 * len(methods) + 1, 2.2 * len(drugs) + 0.8),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for i, drug in enumerate(drugs):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            sub = preds[(preds["drug"] == drug) & (preds["method"] == method)]
            keys = (
                sub.groupby(by, sort=True)["label"].first().sort_values(kind="stable")
                if len(sub)
                else pd.Series(dtype=object)
            )
            values = [sub.loc[sub[by] == k, "p_sensitive"].to_numpy() for k in keys.index]
            if values:
                parts = ax.boxplot(
                    values,
                    orientation="horizontal",
                    widths=0.6,
                    patch_artist=True,
                    flierprops={"markersize": 2},
                )
                for box, label in zip(parts["boxes"], keys.to_numpy(), strict=True):
                    box.set_facecolor(SENSITIVITY_COLORS.get(str(label), "#999999"))
                ax.set_yticks(np.arange(1, len(keys) + 1), keys.index.astype(str), fontsize=6)
            ax.set_xlim(0, 1)
            if i == 0:
                ax.set_title(method, fontsize=7)
            if j == 0:
                ax.set_ylabel(drug, fontsize=8)
            if i == len(drugs) - 1:
                ax.set_xlabel("P(sensitive)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig
