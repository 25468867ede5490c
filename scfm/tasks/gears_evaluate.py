"""``scfm evaluate gears``: GEARS with scfm gene embeddings vs its controls and simple baselines.

    Perturb-seq h5ad ──► PerturbData (validated, pseudobulks, top-20 DE genes)
      │ perturbation graph from gene sets (or an edge list); every perturbed gene must be in it
      │ gene features per --model: mean decoder state over control cells (computed once)
      ▼ for each split seed (GEARS simulation split: unseen perturbed genes held out)
      ├─► GEARS + scfm gene embeddings (each --model, and the random-init control)
      ├─► GEARS with learned gene embeddings (the original)
      └─► no change, mean training effect, linear (Ahlmann-Eltze), additive (combinations)
      ▼
    comparison.csv / .md (mean ± sd over seeds), per_perturbation.csv, per_seed.csv,
    changes.csv, splits.json, comparison.png, changes.png → output dir + one MLflow run

Every method sees the same split; metrics (``scfm.tasks.perturb_metrics``) compare pseudobulk
means of the held-out perturbations. Times are wall seconds of fitting and predicting (scfm rows
add the gene-embedding time).
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

from scfm.tasks.gears import GearsData, GearsHead, GeneFeatures, predict_means
from scfm.tasks.metrics import slug
from scfm.tasks.perturb_baselines import run_baselines
from scfm.tasks.perturb_data import (
    PerturbData,
    PerturbDataConfig,
    PerturbSplit,
    load_perturb_data,
    simulation_split,
)
from scfm.tasks.perturb_graphs import (
    GeneGraph,
    GraphConfig,
    PerturbationGraphSource,
    graph_source,
    perturbation_graph,
)
from scfm.tasks.perturb_metrics import METRICS, mean_metrics, perturbation_metrics

logger = logging.getLogger(__name__)
LEARNED_LABEL = "GEARS (learned gene embeddings)"


@dataclass
class SplitSettings:
    """GEARS simulation-split fractions (``PertData.prepare_split`` defaults)."""

    train_gene_set_size: float = 0.75
    combo_seen2_train_frac: float = 0.75


@dataclass
class GearsEvaluateConfig:
    """Inputs and options of ``scfm evaluate gears``."""

    data: PerturbDataConfig
    models: list[str] = field(default_factory=list)  # --model specs (scfm.tasks.models)
    control: bool = True  # add a random-init model of the first model's architecture
    learned: bool = True  # original GEARS (learned gene embeddings)
    baselines: list[str] | None = None  # None = all that apply
    seeds: list[int] = field(default_factory=lambda: [1])  # split seeds
    split: SplitSettings = field(default_factory=SplitSettings)
    graph: GraphConfig = field(default_factory=GraphConfig)
    head: dict[str, Any] = field(default_factory=dict)  # GEARS training options
    max_cells_per_condition: int | None = None  # cap GEARS training cells (None = all)
    embed_cells: int = 200  # control cells averaged per gene embedding
    linear_pca_dim: int = 10
    linear_ridge: float = 0.1
    dataset: str | None = None
    output_dir: str = "results/evaluate/gears"
    device: str = "auto"
    mlflow: bool = True
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GearsTask:
    """Data, perturbation-graph source and graph shared by every method and seed."""

    data: PerturbData
    source: PerturbationGraphSource
    pert_graph: GeneGraph

    def split(self, seed: int, settings: SplitSettings | None = None) -> PerturbSplit:
        s = settings or SplitSettings()
        genes = {c: self.data.condition_genes[i] for i, c in enumerate(self.data.conditions) if i}
        return simulation_split(
            genes,
            seed,
            train_gene_set_size=s.train_gene_set_size,
            combo_seen2_train_frac=s.combo_seen2_train_frac,
        )


def load_gears_task(data_cfg: PerturbDataConfig, graph: GraphConfig, *, adata=None) -> GearsTask:
    """Read and check the data against the perturbation-graph source, build the graph."""
    source = graph_source(graph.gene_sets, graph.edge_list)
    data = load_perturb_data(data_cfg, graph_genes=source.genes, adata=adata)
    return GearsTask(data, source, perturbation_graph(data, source, graph))


@dataclass
class MethodRun:
    """One method's predictions on one split."""

    method: str
    kind: str  # scfm, control, gears, baseline
    seed: int
    perturbations: list[str]
    means: np.ndarray
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class GearsEvaluation:
    table: pd.DataFrame  # one row per method, averaged over seeds
    per_seed: pd.DataFrame
    per_perturbation: pd.DataFrame
    changes: pd.DataFrame
    runs: list[MethodRun]
    splits: list[PerturbSplit]
    files: dict[str, Path]
    run_id: str | None
    summary: dict[str, Any]


def evaluate_gears(cfg: GearsEvaluateConfig, *, backbones=None, adata=None) -> GearsEvaluation:
    """Run every method on every split seed and write the comparison.

    Parameters
    ----------
    backbones
        scfm models already in memory (:class:`~scfm.tasks.models.Backbone`), before ``models``.
    adata
        The Perturb-seq AnnData in memory instead of reading ``cfg.data.h5ad``.
    """
    from scfm.tasks.gears import scfm_gene_features
    from scfm.tasks.models import backbones_with_control, load_backbone

    task = load_gears_task(cfg.data, cfg.graph, adata=adata)
    seed0 = cfg.seeds[0]
    models = list(backbones or []) + [load_backbone(s, seed=seed0) for s in cfg.models]
    models = backbones_with_control(models, control=cfg.control, seed=seed0)
    features: list[tuple[str, str, GeneFeatures, float]] = []
    for backbone in models:
        logger.info("gene embeddings of %s", backbone.label)
        start = time.perf_counter()
        f = scfm_gene_features(
            task.data,
            backbone.model,
            label=backbone.label,
            max_cells=cfg.embed_cells,
            seed=seed0,
            device=cfg.device,
            progress=cfg.progress,
        )
        kind = "control" if backbone.is_random else "scfm"
        features.append((f"GEARS + {backbone.label}", kind, f, time.perf_counter() - start))

    runs: list[MethodRun] = []
    splits = []
    for seed in cfg.seeds:
        split = task.split(seed, cfg.split)
        splits.append(split)
        runs += _baseline_runs(cfg, task, split)
        variants: list[tuple[str, str, GeneFeatures | None, float]] = list(features)
        if cfg.learned:
            variants.append((LEARNED_LABEL, "gears", None, 0.0))
        for label, kind, f, embed_s in variants:
            runs.append(_gears_run(cfg, task, split, label, kind, f, embed_s))
    return _write_outputs(cfg, task, splits, runs, features)


def _baseline_runs(cfg: GearsEvaluateConfig, task: GearsTask, split: PerturbSplit):
    out = []
    for b in run_baselines(
        task.data, split, cfg.baselines, pca_dim=cfg.linear_pca_dim, ridge=cfg.linear_ridge
    ):
        out.append(
            MethodRun(b.label, "baseline", split.seed, b.perturbations, b.means, b.seconds, b.info)
        )
    return out


def _gears_run(
    cfg: GearsEvaluateConfig,
    task: GearsTask,
    split: PerturbSplit,
    label: str,
    kind: str,
    features: GeneFeatures | None,
    embed_seconds: float,
) -> MethodRun:
    from scfm.tasks.base import fit_head

    logger.info("training %s on split seed %d", label, split.seed)
    module = GearsData.build(
        task.data,
        split,
        task.pert_graph,
        features,
        coexpr_k=cfg.graph.coexpr_k,
        coexpr_threshold=cfg.graph.coexpr_threshold,
        max_cells_per_condition=cfg.max_cells_per_condition,
        seed=split.seed,
    )
    start = time.perf_counter()
    fit = fit_head(
        GearsHead(),
        module,
        {"seed": split.seed, **cfg.head},
        device=cfg.device,
        progress=cfg.progress,
    )
    conds = module.conditions["test"]
    means = predict_means(fit.model, module.cond_nodes[conds])
    seconds = time.perf_counter() - start + embed_seconds
    info = {
        "best_epoch": fit.best_epoch,
        "epochs": len(fit.history),
        "train_cells": module.size("train"),
        "coexpr_edges": module.coexpr.n_edges,
        "genes_without_feature": None if features is None else features.n_missing,
    }
    names = [module.condition_names[c] for c in conds]
    return MethodRun(label, kind, split.seed, names, means, seconds, info)


# ------------------------------------------------------------------------------------ outputs
def score_runs(
    data: PerturbData, runs: list[MethodRun], splits: list[PerturbSplit]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-perturbation metrics and the long table of predicted vs observed DE-gene changes."""
    subgroup = {(s.seed, p): g for s in splits for p, g in s.subgroup.items()}
    n_cells = dict(zip(data.conditions, data.n_cells, strict=True))
    frames, changes = [], []
    for r in runs:
        idx = data.index(r.perturbations)
        m = perturbation_metrics(
            r.means, data.means[idx], data.control_mean, data.de_idx[idx], names=r.perturbations
        )
        m.insert(0, "seed", r.seed)
        m.insert(0, "kind", r.kind)
        m.insert(0, "method", r.method)
        m.insert(4, "subgroup", [subgroup.get((r.seed, p), "") for p in r.perturbations])
        m.insert(5, "n_cells", [int(n_cells[p]) for p in r.perturbations])
        frames.append(m)
        for j, i in enumerate(idx):
            de = data.de_idx[i]
            changes.append(
                pd.DataFrame(
                    {
                        "method": r.method,
                        "seed": r.seed,
                        "perturbation": r.perturbations[j],
                        "gene": data.genes[de],
                        "true_change": data.change[i, de],
                        "pred_change": r.means[j, de] - data.control_mean[de],
                    }
                )
            )
    per_pert = pd.concat(frames, ignore_index=True)
    return per_pert, pd.concat(changes, ignore_index=True) if changes else pd.DataFrame()


def aggregate(per_pert: pd.DataFrame, runs: list[MethodRun]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (method, seed) means over perturbations, and per method mean ± sd over seeds."""
    seconds = {(r.method, r.seed): r.seconds for r in runs}
    rows = []
    for (method, kind, seed), g in per_pert.groupby(["method", "kind", "seed"], sort=False):
        rows.append(
            {
                "method": method,
                "kind": kind,
                "seed": seed,
                **mean_metrics(g),
                "n_perturbations": len(g),
                "seconds": seconds[(method, seed)],
            }
        )
    per_seed = pd.DataFrame(rows)
    out = []
    for (method, kind), g in per_seed.groupby(["method", "kind"], sort=False):
        row: dict[str, Any] = {"method": method, "kind": kind}
        for m in METRICS:
            row[m] = float(g[m].mean()) if g[m].notna().any() else float("nan")
            row[f"{m}_sd"] = float(g[m].std(ddof=0)) if g[m].notna().any() else float("nan")
        row |= {
            "n_seeds": len(g),
            "n_perturbations": float(g["n_perturbations"].mean()),
            "seconds": float(g["seconds"].mean()),
        }
        out.append(row)
    return pd.DataFrame(out), per_seed


def markdown_table(table: pd.DataFrame) -> str:
    """The comparison as Markdown, best top-20-DE MSE first (mean ± sd over split seeds)."""

    def fmt(v: float, sd: float) -> str:
        return "n/a" if np.isnan(v) else f"{v:.4f} ± {sd:.4f}"

    t = table.sort_values("mse_de", kind="stable")
    lines = [
        "| method | kind | top-20 DE MSE | Pearson delta | Pearson delta (DE) "
        "| direction (DE) | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in t.itertuples():
        lines.append(
            f"| {r.method} | {r.kind} | {fmt(r.mse_de, r.mse_de_sd)} | "
            f"{fmt(r.pearson_delta, r.pearson_delta_sd)} | "
            f"{fmt(r.pearson_delta_de, r.pearson_delta_de_sd)} | "
            f"{'n/a' if np.isnan(r.direction_de) else f'{r.direction_de:.3f}'} | "
            f"{r.seconds:.1f} |"
        )
    return "\n".join(lines)


def _write_outputs(cfg, task: GearsTask, splits, runs, features) -> GearsEvaluation:
    import matplotlib.pyplot as plt

    from scfm.tasks.perturb_plots import change_scatter_grid, gears_comparison_figure

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = cfg.dataset or Path(cfg.data.h5ad).stem
    per_pert, changes = score_runs(task.data, runs, splits)
    table, per_seed = aggregate(per_pert, runs)
    table.insert(0, "dataset", dataset)
    files = {
        "comparison_csv": out / "comparison.csv",
        "comparison_md": out / "comparison.md",
        "per_seed_csv": out / "per_seed.csv",
        "per_perturbation_csv": out / "per_perturbation.csv",
        "changes_csv": out / "changes.csv",
        "splits_json": out / "splits.json",
        "comparison_png": out / "comparison.png",
        "changes_png": out / "changes.png",
    }
    table.to_csv(files["comparison_csv"], index=False)
    per_seed.to_csv(files["per_seed_csv"], index=False)
    per_pert.to_csv(files["per_perturbation_csv"], index=False)
    changes.to_csv(files["changes_csv"], index=False)
    summary = {
        "dataset": dataset,
        "data": task.data.summary(),
        "perturbation_graph": {
            "source": task.source.description,
            "nodes": len(task.pert_graph.nodes),
            "edges": task.pert_graph.n_edges,
        },
        "gene_features": {
            label: {"genes_without_feature": f.n_missing, "dim": int(f.values.shape[1])}
            for label, _, f, _ in features
        },
        "splits": [s.to_dict() for s in splits],
        "method_info": {f"{r.method} | seed {r.seed}": r.info for r in runs},
    }
    files["splits_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files["comparison_md"].write_text(_markdown_report(summary, table, cfg.seeds))
    title = f"{dataset}: held-out perturbations, {len(cfg.seeds)} split seed(s)"
    for key, fig in (
        ("comparison_png", gears_comparison_figure(table, title)),
        ("changes_png", change_scatter_grid(changes)),
    ):
        fig.savefig(files[key], dpi=110)
        plt.close(fig)
    run_id = _log_mlflow(cfg, dataset, table, files) if cfg.mlflow else None
    return GearsEvaluation(table, per_seed, per_pert, changes, runs, splits, files, run_id, summary)


def _markdown_report(summary: dict[str, Any], table: pd.DataFrame, seeds: list[int]) -> str:
    d = summary["data"]
    split = summary["splits"][0]
    notes = [
        f"# Perturbation prediction (GEARS): {summary['dataset']}",
        "",
        f"- data: `{d['source']}`, {d['n_cells']:,} cells × {d['n_genes']} genes "
        f"({d['n_genes_in_vocab']} in the vocabulary), {d['n_perturbations']} perturbations "
        f"({d['n_combinations']} combinations), {d['n_control_cells']:,} control cells",
        f"- perturbation graph: {summary['perturbation_graph']['source']}, "
        f"{summary['perturbation_graph']['nodes']} nodes, "
        f"{summary['perturbation_graph']['edges']} edges",
        f"- GEARS simulation split, seeds {', '.join(map(str, seeds))}; seed {split['seed']}: "
        f"{len(split['train'])} train, {len(split['val'])} validation, "
        f"{len(split['test'])} test perturbations",
        "- metrics on the held-out perturbations' pseudobulk means, mean ± sd over seeds",
    ]
    for label, f in summary["gene_features"].items():
        notes.append(
            f"- {label}: {f['dim']}-d gene embeddings; {f['genes_without_feature']} genes "
            "outside the vocabulary get a learned vector"
        )
    if d["dropped"]:
        notes.append(f"- dropped perturbations: {d['dropped']}")
    return "\n".join(notes + ["", markdown_table(table), ""])


def _log_mlflow(cfg, dataset: str, table: pd.DataFrame, files: dict[str, Path]) -> str:
    import mlflow

    from scfm.tracking import log_params_flat, start_run

    with start_run(
        "evaluate",
        run_name=f"gears {dataset}",
        tags={"scfm.task": "gears", "scfm.dataset": dataset},
        lineage=cfg.models,
    ) as run:
        log_params_flat({"evaluate": cfg.to_dict()})
        metrics = {}
        for r in table.itertuples():
            key = slug(r.method)
            for m in ("mse_de", "pearson_delta", "pearson_delta_de", "direction_de", "seconds"):
                metrics[f"{key}.{m}"] = getattr(r, m)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for path in files.values():
            mlflow.log_artifact(str(path), "evaluation")
        return run.info.run_id
