"""``scfm evaluate embedding``: zero-shot cell embeddings vs HVG/PCA and scVI, scored by scIB.

The first question asked of a foundation model: do its embeddings, used as they are, separate
cell types and remove batch effects better than what a user already has? Independent
evaluations (Kedzierska et al., Genome Biology 2025) found that scGPT and Geneformer zero-shot
embeddings lose to highly variable genes + PCA and to scVI on exactly this test.

    AnnData or h5ad (backed is fine) ──► labelled cells (missing label / batch dropped, counted)
      │ at most ``cells_per_batch`` cells per batch (seeded), counts validated
      ├─► baselines on the file's own genes: PCA(50) of the 2,000 scaled HVGs, PCA(50) of all
      │   log-normalized genes, scVI latent (batch as covariate; when scvi-tools is installed)
      └─► every scfm model + a random-init control of the first one's architecture, embedded
      ▼
    scIB metrics of every representation on the same cells (:mod:`scfm.tasks.scib`)
      ▼
    embedding_metrics.csv / .md, summary.json, scib_results.png, umap.png
    → output dir and one MLflow run (experiment ``evaluate``) tagged with every model's source

The bio-conservation half needs only labels; with a batch key the batch-correction half and the
scIB total (0.6 · bio + 0.4 · batch) follow. Without one, ``total`` is the bio-conservation score.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.tasks.labelled import LabelError, is_missing
from scfm.tasks.metrics import slug
from scfm.tasks.models import Backbone, backbones_with_control, embed_cells, load_backbone
from scfm.tasks.scib import (
    AGGREGATES,
    BATCH_METRICS,
    BIO_METRICS,
    DISPLAY_NAMES,
    MAX_NEIGHBOURS,
    METRICS,
    scib_scores,
)

logger = logging.getLogger(__name__)

BASELINE_KEYS = ("hvg_pca", "all_genes_pca", "scvi")


@dataclass
class EmbeddingEvalConfig:
    """Options of a zero-shot embedding evaluation (the CLI's defaults come from here)."""

    label_key: str
    batch_key: str | None = None  # None: bio conservation only
    models: list[str] = field(default_factory=list)  # --model specs (see scfm.tasks.models)
    baselines: list[str] | None = None  # keys of BASELINE_KEYS; None = all available
    cells_per_batch: int | None = 2000  # seeded subsample per batch (whole data without batches)
    layer: str | None = None  # counts in a layer ("raw" = adata.raw.X); default X
    n_hvg: int = 2000
    n_pcs: int = 50
    scvi_latent: int = 10
    scvi_epochs: int | None = None  # None: scvi-tools' own default for the number of cells
    seed: int = 0
    dataset: str | None = None  # name in tables (default: file stem, or "adata")
    output_dir: str | None = None  # None: no files (the Python API's default)
    umap: bool = True  # the UMAP figure (with output_dir)
    mlflow: bool = False
    device: str = "auto"
    embed_batch_size: int = 64
    exact_knn_max_cells: int = 50_000  # above: approximate neighbours (pynndescent)
    n_jobs: int = 1  # threads of the neighbour search

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------- cells
@dataclass
class ScoredCells:
    """The cells every representation is computed and scored on."""

    counts: sp.csr_matrix  # cells × input genes, raw counts (float32)
    var_names: np.ndarray
    obs: pd.DataFrame
    labels: np.ndarray
    batches: np.ndarray | None
    record: dict[str, Any]  # what was dropped and subsampled (summary.json, MLflow)

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def to_anndata(self):
        import anndata as ad

        return ad.AnnData(
            X=self.counts, obs=self.obs.copy(), var=pd.DataFrame(index=self.var_names)
        )


def _columns(obs: pd.DataFrame) -> str:
    return ", ".join(map(str, obs.columns)) or "none"


def check_obs(obs: pd.DataFrame, label_key: str, batch_key: str | None) -> np.ndarray:
    """Rows with both a label and (if asked) a batch; stops on unusable columns.

    Raises
    ------
    LabelError
        A missing label or batch column, a single label class, or a single batch value; the
        message names the fix.
    """
    if label_key not in obs.columns:
        raise LabelError(
            f"label column {label_key!r} is not in obs; obs columns are: {_columns(obs)}. "
            "Pass the cell-type column with --label-key (label_key=)"
        )
    if batch_key is not None and batch_key not in obs.columns:
        raise LabelError(
            f"batch column {batch_key!r} is not in obs; obs columns are: {_columns(obs)}. "
            "Pass the batch / donor / condition column with --batch-key (batch_key=), or leave "
            "it out to score bio conservation only"
        )
    keep = ~is_missing(obs[label_key])
    if batch_key is not None:
        keep &= ~is_missing(obs[batch_key])
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise LabelError(
            f"no cell has both a {label_key!r} label"
            + (f" and a {batch_key!r} value" if batch_key else "")
            + ": pass columns that are filled in"
        )
    labels = obs[label_key].astype(str).str.strip().to_numpy()[rows]
    classes = np.unique(labels)
    if classes.size < 2:
        raise LabelError(
            f"label column {label_key!r} has a single class ({classes[0]!r}) among the labelled "
            "cells: the scIB metrics compare cell types, so pass a column with at least two "
            "(e.g. cell_type) or data with more than one cell type"
        )
    if batch_key is not None:
        values = np.unique(obs[batch_key].astype(str).to_numpy()[rows])
        if values.size < 2:
            raise LabelError(
                f"batch column {batch_key!r} has a single value ({values[0]!r}) among the "
                "labelled cells: batch correction needs at least two batches. Leave out "
                "--batch-key (batch_key=None) to score bio conservation only, or pass a column "
                "with several batches"
            )
    return rows


def subsample_per_batch(
    groups: np.ndarray, cells_per_batch: int | None, seed: int
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Positions of at most ``cells_per_batch`` cells of each group (seeded, sorted)."""
    rng = np.random.default_rng(seed)
    keep, per_group = [], {}
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        n = members.size
        if cells_per_batch is not None and n > cells_per_batch:
            members = np.sort(rng.choice(members, size=cells_per_batch, replace=False))
        keep.append(members)
        per_group[str(g)] = {"cells": int(n), "scored": int(members.size)}
    return np.sort(np.concatenate(keep)), per_group


def select_cells(adata, cfg: EmbeddingEvalConfig, *, layer: str | None = None) -> ScoredCells:
    """Check obs, drop unlabelled cells, subsample per batch, then read and validate the counts
    (``X``, or ``layer``) of the chosen cells only: a backed AnnData stays on disk."""
    from scfm.data.validate import validate_anndata

    if cfg.cells_per_batch is not None and cfg.cells_per_batch < 1:
        raise ValueError(f"cells_per_batch must be positive or None, got {cfg.cells_per_batch}")
    obs = adata.obs
    n_input = adata.n_obs
    rows = check_obs(obs, cfg.label_key, cfg.batch_key)
    groups = (
        obs[cfg.batch_key].astype(str).to_numpy()[rows]
        if cfg.batch_key
        else np.zeros(rows.size, dtype=str)
    )
    pos, per_group = subsample_per_batch(groups, cfg.cells_per_batch, cfg.seed)
    rows = rows[pos]
    n_dropped = n_input - int(sum(v["cells"] for v in per_group.values()))
    if n_dropped:
        what = "label or batch" if cfg.batch_key else "label"
        logger.warning("dropped %d cells with a missing %s", n_dropped, what)
    subsampled = rows.size < n_input - n_dropped
    scope = "per batch" if cfg.batch_key else "in all"
    if subsampled:
        logger.warning(
            "scoring %d of %d labelled cells: at most %d %s (seeded subsample, seed %d)",
            rows.size, n_input - n_dropped, cfg.cells_per_batch, scope, cfg.seed,
        )  # fmt: skip
    if rows.size <= MAX_NEIGHBOURS:
        raise LabelError(
            f"only {rows.size} cells are left to score (of {n_input}; after dropping cells "
            f"without a label{' or batch' if cfg.batch_key else ''} and subsampling), but the "
            f"scIB metrics use the {MAX_NEIGHBOURS} nearest neighbours of every cell (LISI): "
            f"pass data with more than {MAX_NEIGHBOURS} labelled cells, or raise "
            "--cells-per-batch (cells_per_batch=)"
        )
    counts = sp.csr_matrix(_to_memory(_counts_matrix(adata, layer)[rows]), dtype=np.float32)
    counts.sort_indices()
    sub_obs = obs.iloc[rows].copy()
    labels = sub_obs[cfg.label_key].astype(str).str.strip().to_numpy()
    batches = sub_obs[cfg.batch_key].astype(str).to_numpy() if cfg.batch_key else None
    cells = ScoredCells(
        counts=counts,
        var_names=np.asarray(adata.var_names if layer != "raw" else adata.raw.var_names, str),
        obs=sub_obs,
        labels=labels,
        batches=batches,
        record={
            "n_cells_input": int(n_input),
            "n_cells_dropped_missing": int(n_dropped),
            "n_cells_scored": int(rows.size),
            "cells_per_batch": cfg.cells_per_batch,
            "subsampled": bool(subsampled),
            "subsample_scope": scope,
            "seed": cfg.seed,
            "per_batch": per_group if cfg.batch_key else None,
            "n_labels": int(np.unique(labels).size),
            "n_batches": int(np.unique(batches).size) if batches is not None else 1,
        },
    )
    validation = validate_anndata(cells.to_anndata())
    cells.record["gene_mapping_fraction"] = validation.report.fraction_genes_mapped
    return cells


def _counts_matrix(adata, layer: str | None):
    if layer is None:
        return adata.X
    if layer == "raw":
        if adata.raw is None:
            raise ValueError("layer='raw' but the AnnData has no .raw; pass the counts layer")
        return adata.raw.X
    if layer not in adata.layers:
        raise ValueError(
            f"no layer {layer!r}; layers are: {list(adata.layers) or 'none'} "
            "(layer=None reads X, 'raw' reads .raw)"
        )
    return adata.layers[layer]


def _to_memory(X):
    """Rows of a backed matrix (h5py dataset / anndata sparse dataset) as an in-memory matrix."""
    if sp.issparse(X) or isinstance(X, np.ndarray):
        return X
    if hasattr(X, "to_memory"):
        return X.to_memory()
    return np.asarray(X)


# ------------------------------------------------------------------------- representations
@dataclass
class Representation:
    """One embedding of the scored cells and what it cost."""

    name: str
    kind: str  # "baseline", "scfm", "control"
    X: np.ndarray
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def scvi_available() -> bool:
    from scfm.tasks.baselines import scvi_available as available

    return available()


def choose_baselines(names: list[str] | None) -> list[str]:
    """Baseline keys to run (default: all; ``scvi`` only when scvi-tools is installed)."""
    if names is None:
        if not scvi_available():
            logger.warning(
                "scvi-tools is not installed: skipping the scVI baseline (pip install 'scfm[scvi]')"
            )
        return [k for k in BASELINE_KEYS if k != "scvi" or scvi_available()]
    unknown = [n for n in names if n not in BASELINE_KEYS]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINE_KEYS)}")
    if "scvi" in names and not scvi_available():
        raise ImportError("the scVI baseline needs scvi-tools: pip install 'scfm[scvi]'")
    return list(names)


def hvg_pca(
    counts: sp.csr_matrix, *, n_hvg: int = 2000, n_pcs: int = 50, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Log-normalize → ``n_hvg`` HVGs (Seurat flavour) → scale (clip 10) → PCA (ARPACK).

    Returns the PCA and the number of genes selected (fewer than ``n_hvg`` in small panels).
    """
    from scfm.tasks.baselines import PCATransform

    pca = PCATransform(n_hvg, n_pcs, seed).fit(counts)
    return pca.transform(counts), int(pca.genes_.size)


def all_genes_pca(counts: sp.csr_matrix, *, n_pcs: int = 50, seed: int = 0) -> np.ndarray:
    """PCA (ARPACK, implicitly centred, sparse) of every log-normalized gene, unscaled: the
    "unintegrated" representation of scIB benchmarks."""
    from sklearn.decomposition import PCA

    from scfm.tasks.baselines import log_normalize

    L = log_normalize(counts)
    n = min(n_pcs, L.shape[0] - 1, L.shape[1] - 1)
    return PCA(n, svd_solver="arpack", random_state=seed).fit_transform(L).astype(np.float32)


def scvi_latent(
    counts: sp.csr_matrix,
    batches: np.ndarray | None,
    *,
    n_hvg: int = 2000,
    n_latent: int = 10,
    max_epochs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """scVI latent means, trained on the cells' HVG counts with the batch as covariate."""
    import anndata as ad
    import scvi

    from scfm.tasks.baselines import highly_variable_genes, log_normalize

    scvi.settings.seed = seed
    for name in ("scvi", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    genes = highly_variable_genes(log_normalize(counts), n_hvg)
    obs = pd.DataFrame(
        {"batch": batches if batches is not None else "all"},
        index=[f"c{i}" for i in range(counts.shape[0])],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(counts[:, genes], dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in genes]),
    )
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch" if batches is not None else None)
    model = scvi.model.SCVI(adata, n_latent=n_latent)
    model.train(
        max_epochs=max_epochs,
        accelerator="auto",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    return np.asarray(model.get_latent_representation(adata), dtype=np.float32)


def baseline_representations(cells: ScoredCells, cfg: EmbeddingEvalConfig) -> list[Representation]:
    out = []
    for key in choose_baselines(cfg.baselines):
        start = time.perf_counter()
        info: dict[str, Any] = {"baseline": key}
        if key == "hvg_pca":
            name = f"PCA({cfg.n_pcs}) of HVGs"
            X, info["n_genes"] = hvg_pca(
                cells.counts, n_hvg=cfg.n_hvg, n_pcs=cfg.n_pcs, seed=cfg.seed
            )
        elif key == "all_genes_pca":
            name = f"PCA({cfg.n_pcs}) of all genes"
            X = all_genes_pca(cells.counts, n_pcs=cfg.n_pcs, seed=cfg.seed)
        else:
            name = f"scVI latent ({cfg.scvi_latent})"
            X = scvi_latent(
                cells.counts,
                cells.batches,
                n_hvg=cfg.n_hvg,
                n_latent=cfg.scvi_latent,
                max_epochs=cfg.scvi_epochs,
                seed=cfg.seed,
            )
        seconds = time.perf_counter() - start
        logger.info("baseline %s: %d dims in %.1f s", name, X.shape[1], seconds)
        out.append(Representation(name, "baseline", X, seconds, info))
    return out


def model_representations(
    cells: ScoredCells, backbones: list[Backbone], cfg: EmbeddingEvalConfig
) -> list[Representation]:
    adata = cells.to_anndata()
    out = []
    for backbone in backbones:
        logger.info("embedding with %s", backbone.label)
        X, seconds = embed_cells(
            adata, backbone, batch_size=cfg.embed_batch_size, device=cfg.device
        )
        kind = "control" if backbone.is_random else "scfm"
        info = {"source": backbone.source, **_plain(backbone.metadata)}
        out.append(Representation(backbone.label, kind, np.asarray(X), seconds, info))
    return out


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, str | int | float | bool) or v is None}


# ---------------------------------------------------------------------------------- results
@dataclass
class EmbeddingEvaluation:
    """Everything one evaluation produced."""

    table: pd.DataFrame  # one row per representation, best total first
    representations: list[Representation]
    summary: dict[str, Any]
    files: dict[str, Path]
    run_id: str | None


def run_embedding_evaluation(
    adata,
    cfg: EmbeddingEvalConfig,
    *,
    backbones: list[Backbone] | None = None,
) -> EmbeddingEvaluation:
    """Embed, compute the baselines and score every representation on the same cells.

    Parameters
    ----------
    adata
        An AnnData (in memory or backed) or a path to an ``.h5ad`` (read backed unless
        ``cfg.layer`` is set). Raw counts in ``X`` or ``cfg.layer``.
    cfg
        See :class:`EmbeddingEvalConfig`.
    backbones
        Models already in memory (e.g. trained in-process), evaluated before ``cfg.models``.
    """
    source, dataset, layer = "AnnData", cfg.dataset or "adata", cfg.layer
    if isinstance(adata, str | Path):
        from scfm.data.io import read_counts

        source, dataset = str(adata), cfg.dataset or Path(adata).stem
        adata = read_counts(adata, layer=cfg.layer, backed=cfg.layer is None)
        layer = None  # read_counts moved the layer into X
    start = time.perf_counter()
    cells = select_cells(adata, cfg, layer=layer)
    models = list(backbones or []) + [load_backbone(s, seed=cfg.seed) for s in cfg.models]
    models = backbones_with_control(models, control=True, seed=cfg.seed)
    reps = baseline_representations(cells, cfg) + model_representations(cells, models, cfg)

    rows = []
    for rep in reps:
        logger.info("scIB metrics of %s", rep.name)
        t0 = time.perf_counter()
        scores = scib_scores(
            rep.X,
            cells.labels,
            cells.batches,
            exact_knn_max_cells=cfg.exact_knn_max_cells,
            n_jobs=cfg.n_jobs,
            seed=cfg.seed,
        )
        rows.append(
            {
                "dataset": dataset,
                "representation": rep.name,
                "kind": rep.kind,
                "dims": int(rep.X.shape[1]),
                **scores.values,
                **scores.aggregates(),
                "seconds": rep.seconds,
                "scib_seconds": time.perf_counter() - t0,
                "n_cells": cells.n_cells,
                "n_cells_input": cells.record["n_cells_input"],
                "cells_per_batch": cfg.cells_per_batch,
                "subsampled": cells.record["subsampled"],
            }
        )
    table = pd.DataFrame(rows).sort_values("total", ascending=False, kind="stable")
    table = table.reset_index(drop=True)
    summary = {
        "dataset": dataset,
        "source": source,
        "label_key": cfg.label_key,
        "batch_key": cfg.batch_key,
        "halves": "bio conservation + batch correction" if cfg.batch_key else "bio conservation",
        "total": (
            f"{0.6} · bio conservation + {0.4} · batch correction"
            if cfg.batch_key
            else "bio conservation (no batch key)"
        ),
        "cells": cells.record,
        "models": [
            {"label": b.label, "source": b.source, "kind": "control" if b.is_random else "scfm"}
            for b in models
        ],
        "representations": {
            r.name: {"kind": r.kind, "dims": int(r.X.shape[1]), **_plain(r.info)} for r in reps
        },
        "n_genes_input": int(cells.var_names.size),
        "skipped": _skipped(cfg),
        "winner": str(table.iloc[0]["representation"]),
        "seconds": time.perf_counter() - start,
    }
    table.attrs["subsampling"] = cells.record
    files: dict[str, Path] = {}
    if cfg.output_dir is not None:
        files = _write_outputs(cfg, table, reps, cells, summary)
    run_id = _log_mlflow(cfg, dataset, table, summary, files, models) if cfg.mlflow else None
    return EmbeddingEvaluation(table, reps, summary, files, run_id)


def _skipped(cfg: EmbeddingEvalConfig) -> dict[str, str]:
    out = {}
    if cfg.baselines is None and not scvi_available():
        out["scvi"] = "scvi-tools is not installed (pip install 'scfm[scvi]')"
    if cfg.batch_key is None:
        out["batch correction"] = "no batch key"
    return out


def evaluate_embedding(
    adata,
    models: list[str | Backbone] | tuple = (),
    *,
    label_key: str,
    batch_key: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Score zero-shot embeddings of ``models`` (+ a random-init control) beside HVG/PCA and scVI.

    Parameters
    ----------
    adata
        AnnData with raw counts (in memory or backed), or a path to an ``.h5ad``.
    models
        ``--model`` specs (checkpoint folder, ``models:/name/version``, ``random:<preset>``,
        official ``models.ckpt``) or :class:`~scfm.tasks.models.Backbone` objects.
    label_key
        obs column with the cell types.
    batch_key
        obs column with the batches (donor, condition, …); None scores bio conservation only.
    **options
        Any field of :class:`EmbeddingEvalConfig` (``cells_per_batch``, ``output_dir``,
        ``mlflow``, ``baselines``, ``seed``, …).

    Returns
    -------
    pandas.DataFrame
        One row per representation, best ``total`` first: the scIB metrics, the aggregates,
        dims, seconds, and how many cells were scored (``n_cells``, ``cells_per_batch``,
        ``subsampled``; the full record is in ``table.attrs["subsampling"]``).

    Examples
    --------
    >>> table = evaluate_embedding(adata, ["models:/scfm-pretrained/3"],   # doctest: +SKIP
    ...                            label_key="cell_type", batch_key="donor")
    """
    specs = [m for m in models if not isinstance(m, Backbone)]
    backbones = [m for m in models if isinstance(m, Backbone)]
    cfg = EmbeddingEvalConfig(
        label_key=label_key, batch_key=batch_key, models=[str(s) for s in specs], **options
    )
    return run_embedding_evaluation(adata, cfg, backbones=backbones).table


# ---------------------------------------------------------------------------------- outputs
def metric_columns(batch: bool) -> list[str]:
    """The metric and aggregate columns shown (batch columns only with a batch key)."""
    cols = list(BIO_METRICS) + (list(BATCH_METRICS) if batch else [])
    return cols + (list(AGGREGATES) if batch else ["bio_conservation", "total"])


def markdown_table(table: pd.DataFrame, *, batch: bool = True) -> str:
    """The results as a Markdown table, best total first."""
    cols = metric_columns(batch)
    t = table.sort_values("total", ascending=False, kind="stable")
    head = ["representation", "kind", *[DISPLAY_NAMES[c] for c in cols], "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for _, r in t.iterrows():
        vals = [f"{r[c]:.3f}" if np.isfinite(r[c]) else "–" for c in cols]
        lines.append(
            f"| {r['representation']} | {r['kind']} | " + " | ".join(vals) + f" | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def _markdown_report(summary: dict[str, Any], table: pd.DataFrame, batch: bool) -> str:
    c = summary["cells"]
    sub = (
        f"a seeded subsample of at most {c['cells_per_batch']:,} cells {c['subsample_scope']}"
        if c["subsampled"]
        else f"all of them (at most {c['cells_per_batch']:,} {c['subsample_scope']})"
        if c["cells_per_batch"]
        else "all of them"
    )
    lines = [
        f"# Zero-shot embeddings: {summary['dataset']}",
        "",
        f"- input: `{summary['source']}`, labels `{summary['label_key']}`"
        + (f", batches `{summary['batch_key']}`" if batch else ", no batch key"),
        f"- cells: {c['n_cells_input']:,} in, {c['n_cells_dropped_missing']:,} dropped for a "
        f"missing label{' or batch' if batch else ''}; {c['n_cells_scored']:,} scored: {sub}",
        f"- metrics: scIB ({summary['halves']}), all in [0, 1], higher is better; "
        f"total = {summary['total']}",
    ]
    hvg = [r for r in summary["representations"].values() if r.get("baseline") == "hvg_pca"]
    if hvg:
        lines.append(
            f"- HVGs: {hvg[0]['n_genes']:,} of the file's {summary['n_genes_input']:,} genes "
            "(Seurat flavour), scaled, then PCA"
        )
    for what, why in summary["skipped"].items():
        lines.append(f"- skipped {what}: {why}")
    lines.append(f"- best total: **{summary['winner']}**")
    return "\n".join(lines + ["", markdown_table(table, batch=batch), ""])


def _write_outputs(
    cfg: EmbeddingEvalConfig,
    table: pd.DataFrame,
    reps: list[Representation],
    cells: ScoredCells,
    summary: dict[str, Any],
) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    from scfm.tasks.plots import scib_results_figure, umap_grid

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = cfg.batch_key is not None
    files = {
        "metrics_csv": out / "embedding_metrics.csv",
        "metrics_md": out / "embedding_metrics.md",
        "summary_json": out / "summary.json",
        "scib_png": out / "scib_results.png",
    }
    table.to_csv(files["metrics_csv"], index=False)
    files["metrics_md"].write_text(_markdown_report(summary, table, batch))
    files["summary_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    figs = {
        "scib_png": scib_results_figure(
            table, metric_columns(batch), DISPLAY_NAMES, title=_title(summary)
        )
    }
    if cfg.umap:
        from scfm.inference.plots import umap_coordinates

        files["umap_png"] = out / "umap.png"
        coords = {}
        for rep in reps:
            t0 = time.perf_counter()
            coords[rep.name] = umap_coordinates(rep.X, seed=cfg.seed)
            logger.info("UMAP of %s in %.1f s", rep.name, time.perf_counter() - t0)
        colours = {cfg.label_key: cells.labels}
        if batch:
            colours[cfg.batch_key] = cells.batches
        figs["umap_png"] = umap_grid(coords, colours, title=_title(summary))
    for key, fig in figs.items():
        fig.savefig(files[key], dpi=110)
        plt.close(fig)
    return files


def _title(summary: dict[str, Any]) -> str:
    c = summary["cells"]
    return f"{summary['dataset']}: {c['n_cells_scored']:,} cells, {c['n_labels']} labels" + (
        f", {c['n_batches']} batches ({summary['batch_key']})" if summary["batch_key"] else ""
    )


def _log_mlflow(
    cfg: EmbeddingEvalConfig,
    dataset: str,
    table: pd.DataFrame,
    summary: dict[str, Any],
    files: dict[str, Path],
    backbones: list[Backbone],
) -> str:
    import mlflow

    from scfm.tracking import log_json, log_metrics, log_params_flat, start_run

    tags = {
        "scfm.task": "embedding",
        "scfm.dataset": dataset,
        "scfm.models": " ".join(b.source for b in backbones),
    }
    for i, b in enumerate(backbones):
        tags[f"scfm.model.{i}"] = b.source
        run_id = _registry_run_id(b.source)
        if run_id:  # the run that logged a registered model: a clickable lineage link
            tags[f"scfm.model.{i}.run_id"] = run_id
    with start_run("evaluate", run_name=f"embedding {dataset}", tags=tags) as run:
        log_params_flat({"embedding": cfg.to_dict()})
        log_params_flat(
            {f"model.{i}": {"label": b.label, "source": b.source} for i, b in enumerate(backbones)}
        )
        c = summary["cells"]
        metrics: dict[str, float] = {
            "n_cells_scored": c["n_cells_scored"],
            "n_cells_input": c["n_cells_input"],
            "n_cells_dropped_missing": c["n_cells_dropped_missing"],
        }
        for _, r in table.iterrows():
            key = slug(r["representation"])
            for col in [m.key for m in METRICS] + list(AGGREGATES) + ["seconds"]:
                metrics[f"{key}.{col}"] = r[col]
        log_metrics(metrics)
        log_json(summary, "evaluation/summary.json")
        for path in files.values():
            mlflow.log_artifact(str(path), "evaluation")
        return run.info.run_id


def _registry_run_id(source: str) -> str | None:
    """The MLflow run behind ``models:/name/version`` (None for other specs or on failure)."""
    if not source.startswith("models:/"):
        return None
    parts = source.removeprefix("models:/").split("/")
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    from mlflow import MlflowClient

    try:
        return MlflowClient().get_model_version(parts[0], parts[1]).run_id
    except Exception as exc:  # MlflowException; the evaluation does not depend on the link
        logger.warning("cannot resolve the run of %s: %s", source, exc)
        return None
