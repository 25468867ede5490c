"""Baselines every scfm annotation result is reported beside, on the same split.

Critics of single-cell foundation models (e.g. Kedzierska et al. 2023, Boiarsky et al. 2023)
show that logistic regression on PCA often matches them at cell-type annotation; scfm therefore
always reports:

* ``pca_lr``: logistic regression on PCA(50) of the scaled, log-normalized highly variable genes;
* ``all_genes_lr``: logistic regression on all log-normalized genes, scaled to unit variance and
  clipped at 10 (CellTypist-style; CellTypist switches to SGD for very large data, this does not);
* ``pca_knn``: k-nearest neighbours (k = 15) on the same PCA;
* ``scvi_lr``: logistic regression on an scVI latent space (10 dimensions, trained on the training
  cells' HVG counts, applied to the test cells), when ``scvi-tools`` is installed
  (``pip install 'scfm[scvi]'``).

Every baseline is fitted on the training cells only (gene selection, scaling and PCA included)
and sees raw counts in the file's own genes; no label or statistic of a test cell leaks in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- preprocessing
def log_normalize(counts: sp.spmatrix | np.ndarray, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(counts / cell total · target_sum)`` as CSR (cells with no counts stay zero)."""
    X = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X = sp.csr_matrix(sp.diags(scale) @ X)
    X.data = np.log1p(X.data)
    return X.astype(np.float32)


def highly_variable_genes(lognorm: sp.spmatrix, n_top: int = 2000, n_bins: int = 20) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes (Seurat flavour, as ``scanpy``'s default).

    On ``expm1`` of log-normalized data: dispersion = variance / mean, log-transformed, then
    z-scored within 20 bins of log mean expression; genes are ranked by the normalized dispersion.
    """
    X = sp.csr_matrix(lognorm, dtype=np.float64)
    X.data = np.expm1(X.data)
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    var = (sq - mean**2) * n / max(n - 1, 1)
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(disp)
    df = pd.DataFrame({"mean": np.log1p(mean), "disp": disp})
    df["bin"] = pd.cut(df["mean"], bins=n_bins)
    grouped = df.groupby("bin", observed=False)["disp"]
    bin_mean, bin_std = grouped.mean(), grouped.std(ddof=1)
    single = bin_std.isnull()  # a bin with one gene: scanpy keeps that gene's raw dispersion
    bin_std[single], bin_mean[single] = bin_mean[single], 0.0
    norm = (df["disp"].to_numpy() - bin_mean[df["bin"]].to_numpy()) / bin_std[df["bin"]].to_numpy()
    norm = np.where(np.isfinite(norm), norm, -np.inf)
    k = min(n_top, int(np.isfinite(norm).sum()))
    return np.sort(np.argsort(-norm, kind="stable")[:k])


@dataclass
class PCATransform:
    """Log-normalize → HVGs → scale (zero mean, unit variance, clip 10) → PCA, fitted on train."""

    n_hvg: int = 2000
    n_pcs: int = 50
    seed: int = 0
    genes_: np.ndarray = field(init=False, repr=False)
    mean_: np.ndarray = field(init=False, repr=False)
    std_: np.ndarray = field(init=False, repr=False)
    pca_: Any = field(init=False, repr=False)

    def fit(self, counts: sp.spmatrix) -> PCATransform:
        from sklearn.decomposition import PCA

        L = log_normalize(counts)
        self.genes_ = highly_variable_genes(L, self.n_hvg)
        Z = L[:, self.genes_].toarray()
        self.mean_ = Z.mean(axis=0)
        self.std_ = Z.std(axis=0, ddof=1)
        self.std_[self.std_ == 0] = 1.0
        Z = self._scale(Z)
        n_pcs = min(self.n_pcs, Z.shape[0] - 1, Z.shape[1] - 1)  # arpack needs fewer
        self.pca_ = PCA(n_components=n_pcs, svd_solver="arpack", random_state=self.seed).fit(Z)
        return self

    def _scale(self, Z: np.ndarray) -> np.ndarray:
        return np.clip((Z - self.mean_) / self.std_, -10.0, 10.0)

    def transform(self, counts: sp.spmatrix) -> np.ndarray:
        Z = log_normalize(counts)[:, self.genes_].toarray()
        return self.pca_.transform(self._scale(Z)).astype(np.float32)


def _logreg(seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=1.0, random_state=seed)


# ---------------------------------------------------------------------------------- baselines
class Baseline(Protocol):
    """Fit on training counts and labels, predict labels of other cells."""

    name: str

    def fit(self, counts: sp.csr_matrix, labels: np.ndarray) -> Baseline: ...

    def predict(self, counts: sp.csr_matrix) -> np.ndarray: ...


@dataclass
class PCALogReg:
    """Logistic regression on PCA(50) of scaled log-normalized HVGs."""

    n_hvg: int = 2000
    n_pcs: int = 50
    seed: int = 0
    name: str = "LR on PCA(50) of HVGs"

    def fit(self, counts, labels):
        self.pca_ = PCATransform(self.n_hvg, self.n_pcs, self.seed).fit(counts)
        self.clf_ = _logreg(self.seed).fit(self.pca_.transform(counts), labels)
        return self

    def predict(self, counts):
        return self.clf_.predict(self.pca_.transform(counts))


@dataclass
class PCAKNN:
    """k-nearest-neighbour vote on PCA(50) of scaled log-normalized HVGs."""

    n_hvg: int = 2000
    n_pcs: int = 50
    k: int = 15
    seed: int = 0
    name: str = "kNN (k=15) on PCA(50)"

    def fit(self, counts, labels):
        from sklearn.neighbors import KNeighborsClassifier

        self.pca_ = PCATransform(self.n_hvg, self.n_pcs, self.seed).fit(counts)
        k = min(self.k, counts.shape[0])
        self.clf_ = KNeighborsClassifier(n_neighbors=k).fit(self.pca_.transform(counts), labels)
        return self

    def predict(self, counts):
        return self.clf_.predict(self.pca_.transform(counts))


@dataclass
class AllGenesLogReg:
    """CellTypist-style: logistic regression on all log-normalized genes, unit variance, clip 10.

    Scaling keeps the matrix sparse (no centring), so it works on large files.
    """

    seed: int = 0
    name: str = "LR on all genes (CellTypist-style)"

    def _features(self, counts):
        X = log_normalize(counts).multiply(self.inv_std_).tocsr()
        X.data = np.minimum(X.data, 10.0)
        return X

    def fit(self, counts, labels):
        L = log_normalize(counts)
        mean = np.asarray(L.mean(axis=0)).ravel()
        var = np.asarray(L.multiply(L).mean(axis=0)).ravel() - mean**2
        std = np.sqrt(np.maximum(var, 0))
        self.inv_std_ = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0).reshape(1, -1)
        self.clf_ = _logreg(self.seed).fit(self._features(counts), labels)
        return self

    def predict(self, counts):
        return self.clf_.predict(self._features(counts))


@dataclass
class ScviLogReg:
    """Logistic regression on the scVI latent space (scVI trained on the training cells' HVGs)."""

    n_hvg: int = 2000
    n_latent: int = 10
    max_epochs: int = 100
    seed: int = 0
    name: str = "scVI latent + LR"

    def _adata(self, counts):
        import anndata as ad

        X = sp.csr_matrix(counts[:, self.genes_], dtype=np.float32)
        return ad.AnnData(X=X, var=pd.DataFrame(index=[f"g{i}" for i in self.genes_]))

    def fit(self, counts, labels):
        import scvi

        scvi.settings.seed = self.seed
        logging.getLogger("scvi").setLevel(logging.WARNING)
        logging.getLogger("lightning").setLevel(logging.WARNING)
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        self.genes_ = highly_variable_genes(log_normalize(counts), self.n_hvg)
        adata = self._adata(counts)
        scvi.model.SCVI.setup_anndata(adata)
        self.model_ = scvi.model.SCVI(adata, n_latent=self.n_latent)
        self.model_.train(
            max_epochs=self.max_epochs,
            accelerator="auto",
            enable_progress_bar=False,
            early_stopping=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
        )
        z = self.model_.get_latent_representation(adata)
        self.clf_ = _logreg(self.seed).fit(z, labels)
        return self

    def predict(self, counts):
        z = self.model_.get_latent_representation(self._adata(counts))
        return self.clf_.predict(z)


def scvi_available() -> bool:
    """Whether ``scvi-tools`` can be imported (the optional ``scfm[scvi]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("scvi") is not None


BASELINES: dict[str, type] = {
    "pca_lr": PCALogReg,
    "all_genes_lr": AllGenesLogReg,
    "pca_knn": PCAKNN,
    "scvi_lr": ScviLogReg,
}


def make_baselines(
    names: list[str] | None = None, *, seed: int = 0, scvi_epochs: int = 100
) -> list[Baseline]:
    """Baseline instances by key (default: all; ``scvi_lr`` only if scvi-tools is installed)."""
    if names is None:
        names = [n for n in BASELINES if n != "scvi_lr" or scvi_available()]
        if not scvi_available():
            logger.warning(
                "scvi-tools is not installed: skipping the scVI baseline (pip install 'scfm[scvi]')"
            )
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(BASELINES)}")
    if "scvi_lr" in names and not scvi_available():
        raise ImportError("the scVI baseline needs scvi-tools: pip install 'scfm[scvi]'")
    out: list[Baseline] = []
    for n in names:
        kwargs: dict[str, Any] = {"seed": seed}
        if n == "scvi_lr":
            kwargs["max_epochs"] = scvi_epochs
        out.append(BASELINES[n](**kwargs))
    return out


@dataclass
class FitPredict:
    """Predictions of one method and what they cost."""

    name: str
    predictions: np.ndarray
    seconds: float


def run_baseline(
    baseline: Baseline,
    counts: sp.csr_matrix,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> FitPredict:
    """Fit on ``train`` rows, predict ``test`` rows, timed."""
    start = time.perf_counter()
    baseline.fit(counts[train], labels[train])
    pred = np.asarray(baseline.predict(counts[test]), dtype=str)
    return FitPredict(baseline.name, pred, time.perf_counter() - start)


@dataclass
class LinearProbe:
    """Logistic regression on precomputed features (e.g. scfm cell embeddings), standardized."""

    seed: int = 0
    name: str = "linear probe"

    def fit(self, features: np.ndarray, labels: np.ndarray) -> LinearProbe:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.clf_ = make_pipeline(StandardScaler(), _logreg(self.seed)).fit(features, labels)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.clf_.predict(features)
