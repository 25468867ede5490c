"""``scfm finetune gears``: a Ray Tune sweep of the GEARS head, then a test on held-out
perturbations.

Perturb-seq h5ad ──► PerturbData + perturbation graph ──► GEARS simulation split (one seed)
  │ gene features: the --model's context embeddings (or ``learned`` for the original GEARS)
  ▼
run_sweep (lr, hidden width, GNN layers; ASHA on validation top-20-DE MSE; MLflow parent run +
a child run per trial; best head saved and registered)
  ▼
best head on the test perturbations: per-perturbation metrics, logged to the parent run
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.tasks.gears_evaluate import SplitSettings, load_gears_task
from scfm.tasks.perturb_data import PerturbDataConfig
from scfm.tasks.perturb_graphs import GraphConfig
from scfm.tasks.perturb_metrics import mean_metrics
from scfm.tasks.tune import SweepConfig, SweepResult, run_sweep

logger = logging.getLogger(__name__)
LEARNED = "learned"


@dataclass
class GearsFinetuneConfig:
    """Inputs and options of ``scfm finetune gears``."""

    data: PerturbDataConfig
    model: str = "random:tiny"  # a --model spec, or "learned" (original GEARS embeddings)
    seed: int = 1  # split seed
    split: SplitSettings = field(default_factory=SplitSettings)
    graph: GraphConfig = field(default_factory=GraphConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    max_cells_per_condition: int | None = None
    embed_cells: int = 200
    output_dir: str = "results/finetune/gears"
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GearsFinetuneResult:
    sweep: SweepResult
    test: dict[str, float]  # mean metrics over the test perturbations
    per_perturbation: pd.DataFrame
    label: str
    files: dict[str, Path]


def finetune_gears(cfg: GearsFinetuneConfig, *, adata=None) -> GearsFinetuneResult:
    """Sweep the GEARS head on one split and test the best configuration."""
    import mlflow

    from scfm.tasks.base import load_head
    from scfm.tasks.gears import GearsData, GearsHead, evaluate_split, scfm_gene_features
    from scfm.tasks.models import load_backbone
    from scfm.tracking import tracking_uri

    task = load_gears_task(cfg.data, cfg.graph, adata=adata)
    split = task.split(cfg.seed, cfg.split)
    features, label = None, "GEARS (learned gene embeddings)"
    if cfg.model != LEARNED:
        backbone = load_backbone(cfg.model, seed=cfg.seed)
        features = scfm_gene_features(
            task.data,
            backbone.model,
            label=backbone.label,
            max_cells=cfg.embed_cells,
            seed=cfg.seed,
            device=cfg.device,
        )
        label = f"GEARS + {backbone.label}"
    module = GearsData.build(
        task.data,
        split,
        task.pert_graph,
        features,
        coexpr_k=cfg.graph.coexpr_k,
        coexpr_threshold=cfg.graph.coexpr_threshold,
        max_cells_per_condition=cfg.max_cells_per_condition,
        seed=cfg.seed,
    )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(cfg.data.h5ad).stem
    head = GearsHead()
    sweep = run_sweep(
        head,
        module,
        cfg.sweep,
        output_dir=out / "model",
        lineage=[str(cfg.model)],
        tags={"scfm.dataset": dataset, "scfm.backbone": label},
        params={
            "data": {**cfg.data.to_dict(), "split": {"seed": cfg.seed, **asdict(cfg.split)}},
            "graph": asdict(cfg.graph),
            "model": {"spec": cfg.model, "label": label},
        },
    )
    model, _ = load_head(sweep.model_dir, head)
    per_pert = evaluate_split(model, module, "test")
    per_pert.insert(1, "subgroup", [split.subgroup[p] for p in per_pert["perturbation"]])
    test = mean_metrics(per_pert)
    files = {
        "per_perturbation_csv": out / "test_per_perturbation.csv",
        "metrics_json": out / "test_metrics.json",
        "trials_csv": out / "trials.csv",
    }
    per_pert.to_csv(files["per_perturbation_csv"], index=False)
    sweep.trials.to_csv(files["trials_csv"], index=False)
    summary = {
        "dataset": dataset,
        "method": label,
        **test,
        "n_test_perturbations": len(per_pert),
        "best_config": sweep.best_config,
        "model_uri": sweep.model_uri,
        "split": split.to_dict(),
    }
    files["metrics_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=sweep.parent_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if np.isfinite(v)})
        for key in ("per_perturbation_csv", "metrics_json"):
            mlflow.log_artifact(str(files[key]), "test")
    return GearsFinetuneResult(sweep, test, per_pert, label, files)
