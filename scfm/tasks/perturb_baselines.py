"""Simple perturbation baselines on the same split as the deep models (Ahlmann-Eltze et al. 2024).

Every baseline sees only the pseudobulk means of the *training* perturbations (training and
validation sets: no model selection happens here) and the control mean:

* ``no_change`` — the control mean;
* ``mean`` — control mean + the gene-wise mean change over the training perturbations;
* ``linear`` — the linear model of Ahlmann-Eltze, Huber & Anders
  (``run_linear_pretrained_model.R``): gene embedding ``G`` = the top ``pca_dim`` principal
  components of the training pseudobulk matrix (genes × training conditions, control included),
  perturbation embedding ``P`` = the rows of ``G`` of the perturbed genes (sum over the genes of a
  combination), ``Y`` = training changes, row-centred (``center``), ridge solution
  ``W = (GᵀG + λI)⁻¹ Gᵀ Y Pᵀ (PPᵀ + λI)⁻¹`` and prediction ``G W P + center + control mean``.
  Only perturbations whose genes are measured have a row in ``G``: as in the original, other
  training perturbations are left out of the fit, and test perturbations without an embedding get
  ``P = 0`` (prediction = ``center`` + control, i.e. a mean baseline); their number is reported.
* ``additive`` (data with combinations) — control + the sum of the observed single-gene changes
  of a combination's genes (a gene without a training single contributes nothing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scfm.tasks.perturb_data import PerturbData, PerturbSplit

BASELINES = ("no_change", "mean", "linear", "additive")
LABELS = {
    "no_change": "no change (control mean)",
    "mean": "mean training effect",
    "linear": "linear (Ahlmann-Eltze, PCA + ridge)",
    "additive": "additive (sum of single effects)",
}


@dataclass
class BaselinePrediction:
    """Predicted mean expression of the test perturbations a baseline covers."""

    key: str
    perturbations: list[str]
    means: np.ndarray  # (n, genes)
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LABELS[self.key]


def solve_bilinear(
    G: np.ndarray, Y: np.ndarray, P: np.ndarray, ridge: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, center)`` with ``W = (GᵀG + λI)⁻¹ Gᵀ (Y − center) Pᵀ (PPᵀ + λI)⁻¹``.

    ``G`` genes × K, ``Y`` genes × perturbations, ``P`` K' × perturbations; ``center`` = row means
    of ``Y`` (``solve_y_axb`` of the original R code).
    """
    center = Y.mean(axis=1)
    Yc = Y - center[:, None]
    left = np.linalg.solve(G.T @ G + ridge * np.eye(G.shape[1]), G.T @ Yc)
    W = np.linalg.solve(P @ P.T + ridge * np.eye(P.shape[0]), (left @ P.T).T).T
    return np.nan_to_num(W), center


def pca_gene_embedding(X: np.ndarray, k: int) -> np.ndarray:
    """Principal-component scores of the rows (genes) of ``X`` (genes × conditions), columns
    centred (R's ``prcomp(X)$x``), ``k`` components."""
    Xc = X - X.mean(axis=0, keepdims=True)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    k = max(1, min(k, S.size))
    return U[:, :k] * S[:k]


def _embedding_rows(data: PerturbData, conditions: Sequence[str]) -> list[np.ndarray | None]:
    """Gene rows of each condition's perturbed genes, None when one is not measured."""
    row = {str(k): i for i, k in enumerate(data.gene_keys)}
    out = []
    for i in data.index(list(conditions)):
        idx = [row.get(k) for k in data.condition_keys[i]]
        out.append(None if any(j is None for j in idx) else np.array(idx, dtype=np.int64))
    return out


def linear_baseline(
    data: PerturbData,
    train: Sequence[str],
    test: Sequence[str],
    *,
    pca_dim: int = 10,
    ridge: float = 0.1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Predicted means of ``test`` by the linear model (see the module docstring)."""
    ctrl = data.control_mean
    fit_conditions = [data.control, *train]
    X = data.means[data.index(fit_conditions)].T  # genes × conditions
    G = pca_gene_embedding(X, pca_dim)
    rows = _embedding_rows(data, list(train))
    used = [c for c, r in zip(train, rows, strict=True) if r is not None]
    P_train = np.stack(
        [np.zeros(G.shape[1])] + [G[r].sum(axis=0) for r in rows if r is not None], axis=1
    )
    Y = np.concatenate(
        [np.zeros((len(ctrl), 1)), data.change[data.index(used)].T], axis=1
    )  # the control enters with zero change and a zero embedding, as in the original
    W, center = solve_bilinear(G, Y, P_train, ridge)
    test_rows = _embedding_rows(data, list(test))
    P_test = np.stack(
        [G[r].sum(axis=0) if r is not None else np.zeros(G.shape[1]) for r in test_rows], axis=1
    )
    pred = (G @ W @ P_test).T + center + ctrl
    fallback = [c for c, r in zip(test, test_rows, strict=True) if r is None]
    info = {
        "pca_dim": int(G.shape[1]),
        "ridge": ridge,
        "n_train_fit": len(used),
        "n_train_without_embedding": len(train) - len(used),
        "n_test_without_embedding": len(fallback),
        "test_without_embedding": fallback,
    }
    return pred, info


def additive_baseline(
    data: PerturbData, train: Sequence[str], test: Sequence[str]
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Combinations among ``test``: control + sum of their genes' training single changes."""
    single = {
        data.condition_genes[i][0]: data.change[i]
        for i in data.index(list(train))
        if len(data.condition_genes[i]) == 1
    }
    combos = [c for c in test if len(data.condition_genes[data.index([c])[0]]) > 1]
    preds, n_missing = [], 0
    for c in combos:
        effect = np.zeros(len(data.genes))
        for g in data.condition_genes[data.index([c])[0]]:
            if g in single:
                effect += single[g]
            else:
                n_missing += 1
        preds.append(data.control_mean + effect)
    means = np.stack(preds) if preds else np.zeros((0, len(data.genes)))
    return combos, means, {"n_unseen_genes": n_missing}


def run_baselines(
    data: PerturbData,
    split: PerturbSplit,
    keys: Sequence[str] | None = None,
    *,
    pca_dim: int = 10,
    ridge: float = 0.1,
) -> list[BaselinePrediction]:
    """Every requested baseline (default: all that apply) on ``split.test``."""
    keys = list(keys or BASELINES)
    unknown = sorted(set(keys) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    if "additive" in keys and not data.has_combinations and keys != ["additive"]:
        keys = [k for k in keys if k != "additive"]  # no combinations: nothing to add up
    test, fit = split.test, split.fit
    out = []
    for key in keys:
        start = time.perf_counter()
        perts, info = list(test), {}
        if key == "no_change":
            means = np.repeat(data.control_mean[None], len(test), axis=0)
        elif key == "mean":
            effect = data.change[data.index(fit)].mean(axis=0)
            means = np.repeat((data.control_mean + effect)[None], len(test), axis=0)
        elif key == "linear":
            means, info = linear_baseline(data, fit, test, pca_dim=pca_dim, ridge=ridge)
        else:
            perts, means, info = additive_baseline(data, fit, test)
        out.append(BaselinePrediction(key, perts, means, time.perf_counter() - start, info))
    return out
