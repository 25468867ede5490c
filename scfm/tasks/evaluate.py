"""``scfm evaluate annotation``: scfm and every baseline on one labelled AnnData, side by side.

    h5ad ──read (X or a layer) ──► labelled cells (missing labels dropped and counted)
      │ validate counts (or the opt-in normalized-input fallback), map genes
      │ split (by a column, or stratified random) ── the same split for every method
      ├─► baselines on the file's own genes: LR on PCA, LR on all genes, kNN, scVI + LR
      └─► each scfm model (+ a random-init control): embed once → MLP head, and a linear probe
      ▼
    comparison.csv / .md, per_class_f1.csv, classes.csv, predictions.csv, split.json,
    comparison.png, confusion.png, per_class_f1.png  → output dir and one MLflow run (``evaluate``)

Metrics: accuracy over all test cells, macro-F1 over the scored classes (see
``scfm.tasks.labelled`` for rare and unseen classes), per-class F1. Times are wall seconds of
fitting and predicting; scfm rows include the embedding time.
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

from scfm.tasks.baselines import LinearProbe, make_baselines, run_baseline
from scfm.tasks.labelled import (
    LabelledData,
    Split,
    SplitConfig,
    load_labelled_task,
    scored_classes,
)
from scfm.tasks.metrics import ClassificationMetrics, classification_metrics, slug
from scfm.tasks.models import Backbone, backbones_with_control, embed_cells, load_backbone

logger = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """Inputs and options of an annotation evaluation."""

    h5ad: str
    label_key: str
    layer: str | None = None  # layer with raw counts ("raw" = adata.raw.X)
    split: SplitConfig = field(default_factory=SplitConfig)
    models: list[str] = field(default_factory=list)  # --model specs (see scfm.tasks.models)
    control: bool = True  # add a random-init model of the first model's architecture
    baselines: list[str] | None = None  # None = all available
    scvi_epochs: int = 100
    head: dict[str, Any] = field(default_factory=dict)  # MLP head options (scfm.tasks.base)
    tune_samples: int = 0  # > 0: choose the head by a Ray Tune sweep of this many trials
    linear_probe: bool = True  # also report LR on the scfm embedding
    normalized_input: bool = False  # opt-in: reconstruct counts from log1p(normalized) values
    total_counts_key: str | None = None
    dataset: str | None = None  # name in tables (default: file stem)
    output_dir: str = "results/evaluate"
    device: str = "auto"
    embed_batch_size: int = 64
    mlflow: bool = True
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MethodResult:
    """One row of the comparison."""

    method: str
    kind: str  # "baseline", "scfm", "control"
    predictions: np.ndarray
    metrics: ClassificationMetrics
    seconds: float
    embed_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    table: pd.DataFrame  # one row per method
    per_class: pd.DataFrame  # methods × classes F1
    classes: pd.DataFrame  # class table (train / test counts, status)
    methods: list[MethodResult]
    split: Split
    files: dict[str, Path]
    run_id: str | None
    n_missing_labels: int


def evaluate_annotation(
    cfg: EvaluateConfig, *, backbones: list[Backbone] | None = None
) -> EvaluationResult:
    """Run every method on the same split and write the comparison.

    Parameters
    ----------
    cfg
        See :class:`EvaluateConfig`.
    backbones
        Models already in memory (e.g. trained in-process), evaluated before ``cfg.models``.
    """
    data, validation, dataset, split, classes = load_labelled_task(cfg)
    scored = scored_classes(classes)
    if not scored:
        raise ValueError(
            "no class has enough training cells and test cells to be scored "
            f"(min_class_cells={cfg.split.min_class_cells}); see the class table:\n{classes}"
        )
    y_test = data.labels[split.test]
    results: list[MethodResult] = []

    for baseline in make_baselines(cfg.baselines, seed=cfg.split.seed, scvi_epochs=cfg.scvi_epochs):
        logger.info("baseline %s", baseline.name)
        fp = run_baseline(baseline, data.counts, data.labels, split.train, split.test)
        m = classification_metrics(y_test, fp.predictions, scored=scored)
        results.append(MethodResult(fp.name, "baseline", fp.predictions, m, fp.seconds))

    models = list(backbones or []) + [load_backbone(s, seed=cfg.split.seed) for s in cfg.models]
    models = backbones_with_control(models, control=cfg.control, seed=cfg.split.seed)
    adata = data.to_anndata()
    for backbone in models:
        results += _scfm_methods(cfg, backbone, adata, data, split, scored, dataset)

    return _write_outputs(cfg, dataset, data, split, classes, results, validation)


def _scfm_methods(
    cfg: EvaluateConfig,
    backbone: Backbone,
    adata,
    data: LabelledData,
    split: Split,
    scored: list[str],
    dataset: str,
) -> list[MethodResult]:
    from scfm.tasks.annotation import AnnotationHead, EmbeddingData, predict_labels
    from scfm.tasks.base import fit_head, load_head

    kind = "control" if backbone.is_random else "scfm"
    logger.info("embedding with %s", backbone.label)
    emb, embed_s = embed_cells(
        adata, backbone, batch_size=cfg.embed_batch_size, device=cfg.device, progress=cfg.progress
    )
    y_test = data.labels[split.test]
    out = []
    head = AnnotationHead()
    module = EmbeddingData.from_split(emb, data.labels, split)
    start = time.perf_counter()
    info: dict[str, Any] = {"source": backbone.source}
    if cfg.tune_samples > 0:
        from scfm.tasks.tune import SweepConfig, run_sweep

        fixed = dict(cfg.head)
        max_epochs = int(fixed.pop("max_epochs", 40))
        sweep = run_sweep(
            head,
            module,
            SweepConfig(
                num_samples=cfg.tune_samples,
                max_epochs=max_epochs,
                seed=cfg.split.seed,
                fixed=fixed,
                storage_path=str(Path(cfg.output_dir) / "tune"),
                name=f"sweep-{slug(backbone.label)}",
                run_name=f"annotation sweep {dataset} {backbone.label}",
            ),
            tags={"scfm.dataset": dataset, "scfm.backbone": backbone.label},
            lineage=[backbone.source],
        )
        model, _ = load_head(sweep.model_dir, head)
        info |= {"sweep_run_id": sweep.parent_run_id, "head_config": sweep.best_config}
    else:
        fit = fit_head(head, module, cfg.head, device=cfg.device)
        model = fit.model
        info |= {"best_epoch": fit.best_epoch, "head_config": fit.config}
    pred = predict_labels(model, module, "test")
    seconds = time.perf_counter() - start + embed_s
    m = classification_metrics(y_test, pred, scored=scored)
    out.append(MethodResult(f"{backbone.label} + MLP", kind, pred, m, seconds, embed_s, info))
    if cfg.linear_probe:
        start = time.perf_counter()
        probe = LinearProbe(seed=cfg.split.seed).fit(emb[split.train], data.labels[split.train])
        pred = np.asarray(probe.predict(emb[split.test]), dtype=str)
        seconds = time.perf_counter() - start + embed_s
        m = classification_metrics(y_test, pred, scored=scored)
        out.append(
            MethodResult(
                f"{backbone.label} + LR",
                kind,
                pred,
                m,
                seconds,
                embed_s,
                {"source": backbone.source},
            )
        )
    return out


# ------------------------------------------------------------------------------------ outputs
def comparison_table(results: list[MethodResult], dataset: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": dataset,
                "method": r.method,
                "kind": r.kind,
                "macro_f1": r.metrics.macro_f1,
                "accuracy": r.metrics.accuracy,
                "seconds": r.seconds,
                "embed_seconds": r.embed_seconds,
                "n_test": r.metrics.n_test,
                "n_scored_classes": len(r.metrics.scored),
            }
            for r in results
        ]
    )


def markdown_table(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table, best macro-F1 first."""
    t = table.sort_values("macro_f1", ascending=False, kind="stable")
    lines = ["| method | kind | macro-F1 | accuracy | time (s) |", "|---|---|---|---|---|"]
    for r in t.itertuples():
        lines.append(
            f"| {r.method} | {r.kind} | {r.macro_f1:.3f} | {r.accuracy:.3f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def _write_outputs(
    cfg: EvaluateConfig,
    dataset: str,
    data: LabelledData,
    split: Split,
    classes: pd.DataFrame,
    results: list[MethodResult],
    validation,
) -> EvaluationResult:
    from scfm.tasks.plots import comparison_figure, confusion_grid, per_class_figure

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results, dataset)
    per_class = pd.DataFrame(
        {r.method: pd.Series(r.metrics.per_class_f1) for r in results}
    ).T.reindex(columns=sorted(set(data.labels)))
    preds = pd.DataFrame(
        {"cell": data.obs.index[split.test].astype(str), "label": data.labels[split.test]}
    )
    for r in results:
        preds[r.method] = r.predictions
    files = {
        "comparison_csv": out / "comparison.csv",
        "comparison_md": out / "comparison.md",
        "per_class_csv": out / "per_class_f1.csv",
        "classes_csv": out / "classes.csv",
        "predictions_csv": out / "predictions.csv",
        "split_json": out / "split.json",
        "comparison_png": out / "comparison.png",
        "confusion_png": out / "confusion.png",
        "per_class_png": out / "per_class_f1.png",
    }
    table.to_csv(files["comparison_csv"], index=False)
    per_class.to_csv(files["per_class_csv"], index_label="method")
    classes.to_csv(files["classes_csv"], index=False)
    preds.to_csv(files["predictions_csv"], index=False)
    summary = {
        "dataset": dataset,
        "source": data.source,
        "label_key": cfg.label_key,
        "n_cells_labelled": data.n_cells,
        "n_missing_labels": data.n_missing_labels,
        "split": split.to_dict(),
        "scored_classes": scored_classes(classes),
        "rare_classes": classes.loc[classes.status == "rare", "class"].tolist(),
        "unseen_classes": classes.loc[classes.status == "unseen", "class"].tolist(),
        "gene_mapping_fraction": validation.report.fraction_genes_mapped,
    }
    files["split_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files["comparison_md"].write_text(_markdown_report(summary, table, classes))
    title = f"{dataset}: {split.description}"
    figs = {
        "comparison_png": comparison_figure(table, title),
        "confusion_png": confusion_grid(
            {r.method: (r.metrics.confusion, r.metrics.labels) for r in results}
        ),
        "per_class_png": per_class_figure(per_class, f"per-class F1, {dataset}"),
    }
    import matplotlib.pyplot as plt

    for key, fig in figs.items():
        fig.savefig(files[key], dpi=120)
        plt.close(fig)
    run_id = _log_mlflow(cfg, dataset, table, summary, files) if cfg.mlflow else None
    return EvaluationResult(
        table, per_class, classes, results, split, files, run_id, data.n_missing_labels
    )


def _markdown_report(summary: dict[str, Any], table: pd.DataFrame, classes: pd.DataFrame) -> str:
    notes = [
        f"# Cell annotation: {summary['dataset']}",
        "",
        f"- input: `{summary['source']}`, labels `{summary['label_key']}`",
        f"- split: {summary['split']['description']} — {summary['split']['n_train']} train "
        f"({summary['split']['n_val']} of them held out for head selection), "
        f"{summary['split']['n_test']} test cells",
        f"- cells dropped for a missing label: {summary['n_missing_labels']}",
        f"- macro-F1 over {len(summary['scored_classes'])} scored classes",
    ]
    if summary["rare_classes"]:
        notes.append(
            "- rare classes (too few training cells; trained on, counted in accuracy, not in "
            f"macro-F1): {', '.join(summary['rare_classes'])}"
        )
    if summary["unseen_classes"]:
        notes.append(
            "- classes with no training cells (counted in accuracy, not in macro-F1): "
            f"{', '.join(summary['unseen_classes'])}"
        )
    class_lines = ["| class | train | test | status |", "|---|---|---|---|"] + [
        f"| {r['class']} | {r.n_train} | {r.n_test} | {r.status} |" for _, r in classes.iterrows()
    ]
    return "\n".join(notes + ["", markdown_table(table), "", "## Classes", "", *class_lines, ""])


def _log_mlflow(
    cfg: EvaluateConfig, dataset: str, table: pd.DataFrame, summary: dict, files: dict[str, Path]
) -> str:
    import mlflow

    from scfm.tracking import log_params_flat, start_run

    with start_run(
        "evaluate",
        run_name=f"annotation {dataset}",
        tags={"scfm.task": "annotation", "scfm.dataset": dataset},
        lineage=cfg.models,
    ) as run:
        log_params_flat({"evaluate": cfg.to_dict()})
        metrics = {"n_missing_labels": float(summary["n_missing_labels"])}
        for r in table.itertuples():
            key = slug(r.method)
            metrics |= {
                f"{key}.macro_f1": r.macro_f1,
                f"{key}.accuracy": r.accuracy,
                f"{key}.seconds": r.seconds,
            }
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for path in files.values():
            mlflow.log_artifact(str(path), "evaluation")
        return run.info.run_id
