"""``scfm finetune annotation``: a Ray Tune sweep of the annotation head, then a test evaluation.

h5ad ──► labelled cells, split (as ``scfm evaluate``) ──► backbone (checkpoint / models:/ /
random:<preset>)
  ├─ finetune_layers = 0: embed once (frozen backbone) ──► EmbeddingData
  └─ finetune_layers = k: packed cells, last k encoder layers train with the head ──► PackedCellData
  ▼
run_sweep (ASHA, parent + child MLflow runs, best head saved and registered)
  ▼
best head on the test cells: accuracy, macro-F1, per-class F1, confusion matrix
(logged to the sweep's parent run and written to the output directory)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.tasks.labelled import SplitConfig, load_labelled_task, scored_classes
from scfm.tasks.metrics import ClassificationMetrics, classification_metrics, slug
from scfm.tasks.tune import SweepConfig, SweepResult, run_sweep

logger = logging.getLogger(__name__)


@dataclass
class AnnotationFinetuneConfig:
    """Inputs and options of ``scfm finetune annotation``."""

    h5ad: str
    label_key: str
    model: str = "random:tiny"  # a --model spec (scfm.tasks.models)
    layer: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    finetune_layers: int = 0  # 0 = frozen backbone (precomputed embeddings)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    normalized_input: bool = False
    total_counts_key: str | None = None
    output_dir: str = "results/finetune/annotation"
    dataset: str | None = None
    device: str = "auto"
    embed_batch_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    sweep: SweepResult
    test: ClassificationMetrics
    backbone: str
    files: dict[str, Path]


def finetune_annotation(cfg: AnnotationFinetuneConfig) -> FinetuneResult:
    """Sweep the annotation head on ``cfg.h5ad`` and evaluate the best one on the test cells."""
    import mlflow

    from scfm.tasks.annotation import (
        AnnotationHead,
        EmbeddingData,
        PackedCellData,
        predict_labels,
    )
    from scfm.tasks.base import load_head
    from scfm.tasks.models import embed_cells, load_backbone
    from scfm.tasks.plots import confusion_figure
    from scfm.tracking import log_figure, tracking_uri

    data, validation, dataset, split, classes = load_labelled_task(cfg)
    backbone = load_backbone(cfg.model, seed=cfg.split.seed)
    if cfg.finetune_layers > 0:
        vocab_counts = validation.mapping.apply(data.counts)
        totals = np.asarray(data.counts.sum(axis=1)).ravel()
        module = PackedCellData.from_split(
            vocab_counts,
            totals,
            data.labels,
            split,
            backbone.model.cfg.to_dict(),
            cfg.finetune_layers,
        )
        state = {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}
        head = AnnotationHead(backbone_state=state)
    else:
        emb, _ = embed_cells(
            data.to_anndata(), backbone, batch_size=cfg.embed_batch_size, device=cfg.device
        )
        module = EmbeddingData.from_split(emb, data.labels, split)
        head = AnnotationHead()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = run_sweep(
        head,
        module,
        cfg.sweep,
        output_dir=out / "model",
        lineage=[str(cfg.model)],
        tags={"scfm.dataset": dataset, "scfm.backbone": backbone.label},
        params={
            "data": {"h5ad": cfg.h5ad, "label_key": cfg.label_key, "split": split.to_dict()},
            "backbone": {
                "label": backbone.label,
                "source": backbone.source,
                "finetune_layers": cfg.finetune_layers,
            },
        },
    )
    model, _ = load_head(sweep.model_dir, head)
    pred = predict_labels(model, module, "test")
    y_test = data.labels[split.test]
    metrics = classification_metrics(y_test, pred, scored=scored_classes(classes))
    files = {
        "predictions_csv": out / "test_predictions.csv",
        "classes_csv": out / "classes.csv",
        "metrics_json": out / "test_metrics.json",
        "trials_csv": out / "trials.csv",
    }
    pd.DataFrame(
        {"cell": data.obs.index[split.test].astype(str), "label": y_test, "prediction": pred}
    ).to_csv(files["predictions_csv"], index=False)
    classes.to_csv(files["classes_csv"], index=False)
    sweep.trials.to_csv(files["trials_csv"], index=False)
    summary = {
        "dataset": dataset,
        "backbone": backbone.label,
        **metrics.summary(),
        "per_class_f1": metrics.per_class_f1,
        "best_config": sweep.best_config,
        "model_uri": sweep.model_uri,
        "split": split.to_dict(),
    }
    files["metrics_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=sweep.parent_run_id):
        mlflow.log_metrics({"test_accuracy": metrics.accuracy, "test_macro_f1": metrics.macro_f1})
        mlflow.log_metrics(
            {f"test_f1.{slug(k)}": v for k, v in metrics.per_class_f1.items() if np.isfinite(v)}
        )
        fig = confusion_figure(
            metrics.confusion, metrics.labels, f"{dataset}: {backbone.label} + MLP (test)"
        )
        fig.savefig(out / "confusion.png", dpi=120)
        files["confusion_png"] = out / "confusion.png"
        log_figure(fig, "test/confusion.png")
        for key in ("predictions_csv", "classes_csv", "metrics_json"):
            mlflow.log_artifact(str(files[key]), "test")
    return FinetuneResult(sweep, metrics, backbone.label, files)
