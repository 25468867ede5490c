"""Perturb-seq inputs for the GEARS tests, built once per process (cached).

* :func:`toy_perturb_adata` — a synthetic screen over 60 real genes of three Hallmark sets
  (interferon-γ, G2M, hypoxia): knocking out a gene of a module lowers (hypoxia: raises) that
  module's other genes, so the gene-set graph carries information between perturbations;
* :func:`papalexi_subset` — the real Papalexi 2021 screen cut to its most frequent
  perturbations and a few dozen cells each;
* :func:`make_app` — a typer app with the GEARS commands, registered as ``scfm.tasks.cli`` does.
"""

from __future__ import annotations

from functools import cache

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import typer

MODULES = {
    "ifng": (
        "STAT1 ISG15 IFIT1 MX1 IFIT3 IFI35 IRF7 IFIT2 OAS2 TAP1 EIF2AK2 RSAD2 MX2 IRF1 OAS3 "
        "TNFSF10 IRF9 CXCL10 IFI44 BST2"
    ).split(),
    "g2m": (
        "AURKA CCNA2 TOP2A CCNB2 CENPA BIRC5 CDC20 PLK1 TTK PRC1 NDC80 KIF11 NUSAP1 CKS2 KIF2C "
        "MKI67 AURKB TPX2 SMC4 BUB1"
    ).split(),
    "hypoxia": (
        "PGK1 PDK1 GBE1 PFKL ALDOA ENO2 PGM1 NDRG1 HK2 ALDOC GPI MXI1 SLC2A1 P4HA1 ADM P4HA2 "
        "ENO1 PFKP AK4 FAM162A"
    ).split(),
}
TARGETS = {
    "STAT1": "ifng",
    "IRF7": "ifng",
    "IRF1": "ifng",
    "MX1": "ifng",
    "AURKA": "g2m",
    "PLK1": "g2m",
    "BUB1": "g2m",
    "TOP2A": "g2m",
    "PGK1": "hypoxia",
    "HK2": "hypoxia",
}
EFFECT = {"ifng": -1.5, "g2m": -1.2, "hypoxia": 1.0}


@cache
def _toy(cells: int, controls: int, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    genes = [g for m in MODULES.values() for g in m]
    module = np.array([m for m, gs in MODULES.items() for _ in gs])
    base = rng.gamma(2.0, 1.5, size=len(genes)) + 0.3
    labels, blocks = [], []
    for label in ["non-targeting", *TARGETS]:
        n = controls if label == "non-targeting" else cells
        rate = base.copy()
        if label != "non-targeting":
            hit = module == TARGETS[label]
            rate[hit] *= np.exp(EFFECT[TARGETS[label]])
            rate[genes.index(label)] *= 0.1  # the knocked-out gene itself
        depth = rng.uniform(0.7, 1.3, size=(n, 1))
        blocks.append(rng.poisson(rate[None] * depth))
        labels += [label] * n
    X = sp.csr_matrix(np.vstack(blocks).astype(np.int32))
    obs = pd.DataFrame(
        {"grna_target": pd.Categorical(labels)}, index=[f"cell_{i}" for i in range(len(labels))]
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def toy_perturb_adata(cells: int = 40, controls: int = 150, seed: int = 0) -> ad.AnnData:
    """A fresh copy of the synthetic screen (raw integer counts, control ``non-targeting``)."""
    return _toy(cells, controls, seed).copy()


def norman_like_adata() -> ad.AnnData:
    """The toy screen labelled as Norman et al. (obs ``condition``: ``ctrl``, ``A+ctrl``,
    ``ctrl+A``) with two combinations (``PLK1+STAT1``, ``IRF1+HK2``: half of those cells)."""
    adata = toy_perturb_adata()
    labels = adata.obs["grna_target"].astype(str).to_numpy().astype(object)
    for gene, combo in (("PLK1", "PLK1+STAT1"), ("HK2", "IRF1+HK2")):
        idx = np.flatnonzero(labels == gene)
        labels[idx[: idx.size // 2]] = combo
    labels[labels == "AURKA"] = "ctrl+AURKA"
    labels[labels == "non-targeting"] = "ctrl"
    adata.obs["condition"] = [
        lab if "+" in lab or lab == "ctrl" else f"{lab}+ctrl" for lab in labels
    ]
    return adata


@cache
def _papalexi(n_perturbations: int, cells: int, controls: int, seed: int) -> ad.AnnData:
    from scfm import datasets
    from scfm.data.io import read_counts

    adata = read_counts(datasets.fetch("papalexi2021"))
    target = adata.obs["grna_target"].astype(str)
    counts = target[target != "non-targeting"].value_counts()
    keep_targets = ["non-targeting", *counts.index[:n_perturbations]]
    rng = np.random.default_rng(seed)
    rows = []
    for t in keep_targets:
        idx = np.flatnonzero(target.to_numpy() == t)
        n = controls if t == "non-targeting" else cells
        rows.append(rng.choice(idx, min(n, idx.size), replace=False))
    sub = adata[np.sort(np.concatenate(rows))].copy()
    sub.obs = sub.obs[["grna_target"]].copy()
    sub.obs["grna_target"] = sub.obs["grna_target"].astype(str).astype("category")
    sub.obsm.clear()
    sub.uns.clear()
    return sub


def papalexi_subset(
    n_perturbations: int = 10, cells: int = 60, controls: int = 300, seed: int = 0
) -> ad.AnnData:
    """The most frequent ``n_perturbations`` targets of Papalexi 2021, ``cells`` cells each."""
    return _papalexi(n_perturbations, cells, controls, seed).copy()


# ------------------------------------------------------------------------------- CLI
COMMON = [
    "--perturbation-key",
    "grna_target",
    "--control-label",
    "non-targeting",
    "--embed-cells",
    "16",
    "--max-cells-per-condition",
    "40",
]


def make_app() -> typer.Typer:
    """``scfm evaluate gears`` / ``scfm finetune gears``, registered as in ``scfm.tasks.cli``."""
    from scfm.tasks.gears_cli import evaluate_gears_command, finetune_gears_command

    app, evaluate, finetune = typer.Typer(), typer.Typer(), typer.Typer()
    evaluate.command("gears")(evaluate_gears_command)
    finetune.command("gears")(finetune_gears_command)
    app.add_typer(evaluate, name="evaluate")
    app.add_typer(finetune, name="finetune")
    return app


def write_subset(folder):
    """The 10 most frequent Papalexi targets, 60 cells each, and 300 control cells."""
    path = folder / "papalexi_subset.h5ad"
    papalexi_subset(n_perturbations=10, cells=60, controls=300).write_h5ad(path)
    return path
