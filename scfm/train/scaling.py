"""Scaling runs: pretrain several model sizes on several data sizes, plot loss vs size and compute.

One MLflow parent run (``scaling``) holds the table and the plot; every point is an ordinary
pretraining run nested under it (tag ``mlflow.parentRunId``), so the MLflow UI shows the sweep
as a tree and each point keeps its own curves and checkpoint. ``concurrent`` points train at
the same time, each its own Ray Train run with the base config's scale settings (a cluster with
room for several worker groups finishes the sweep that much sooner).

x axes: non-embedding parameters (the convention of the scaling-law literature: the 19,267 × E
gene table grows with width but costs no compute per cell) and training FLOPs
(:mod:`scfm.model.flops`, summed over the run by the workers).
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scfm.model.params import parameter_counts
from scfm.train.config import PretrainConfig

EMBEDDING_PARTS = ("token_emb", "pos_emb")


@dataclass
class ScalingSweep:
    """The grid of a scaling study; every other setting comes from the base config."""

    models: list[str] = field(default_factory=lambda: ["tiny", "3m", "10m"])
    train_cells: list[int] = field(default_factory=lambda: [2_000, 20_000])
    epochs: float = 1.0  # passes over each point's train cells (sets train.max_steps)
    name: str = "scaling"
    concurrent: int = 1  # points trained at the same time (each needs its own worker group)

    def __post_init__(self) -> None:
        if self.concurrent < 1:
            raise ValueError(f"concurrent must be at least 1, got {self.concurrent}")

    def points(self) -> list[tuple[str, int]]:
        return [(m, n) for m in self.models for n in self.train_cells]

    def steps(self, cells: int, global_batch_size: int) -> int:
        return max(1, math.ceil(self.epochs * cells / global_batch_size))


@dataclass
class ScalingPoint:
    """One finished run of the sweep."""

    model: str
    train_cells: int
    steps: int
    params: int
    params_non_embedding: int
    train_pflops: float
    val_loss: float
    val_rde_mae: float
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def point_config(
    base: PretrainConfig, sweep: ScalingSweep, model: str, cells: int, stamp: str
) -> PretrainConfig:
    """The pretraining config of one point: base settings, this model and data size."""
    cfg = dataclasses.replace(
        base,
        model=model,
        name=f"{sweep.name}-{model}-{cells}-{stamp}",
        data=dataclasses.replace(base.data, max_train_cells=cells),
        train=dataclasses.replace(
            base.train, max_steps=sweep.steps(cells, base.train.global_batch_size)
        ),
        tracking=dataclasses.replace(
            base.tracking, run_name=f"{sweep.name} {model} × {cells:,} cells", register_as=None
        ),
    )
    cfg.model_config()  # unknown presets fail before anything runs
    return cfg


def run_scaling(
    base: PretrainConfig, sweep: ScalingSweep, out_dir: str | Path
) -> list[ScalingPoint]:
    """Run every point of ``sweep``; log the table and plot to a parent MLflow run.

    Returns the points in sweep order. ``out_dir`` receives ``scaling.csv`` and ``scaling.png``.
    """
    import mlflow

    from scfm.tracking import ensure_experiment, tracking_uri
    from scfm.train.pretrain import run_pretraining

    stamp = time.strftime("%Y%m%d-%H%M%S")
    configs = [point_config(base, sweep, m, n, stamp) for m, n in sweep.points()]
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment("pretrain", base.tracking.experiment)
    parent = client.create_run(experiment_id, run_name=sweep.name, tags={"scfm.stage": "scaling"})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "models", ",".join(sweep.models))
    client.log_param(parent_id, "train_cells", ",".join(map(str, sweep.train_cells)))
    client.log_param(parent_id, "epochs", sweep.epochs)
    client.log_param(parent_id, "corpus", base.data.corpus)
    client.log_param(parent_id, "concurrent", sweep.concurrent)

    def run_point(cfg: PretrainConfig) -> ScalingPoint:
        result = run_pretraining(cfg, tags={"mlflow.parentRunId": parent_id})
        counts = parameter_counts(cfg.model_config())
        embedding = sum(counts[p] for p in EMBEDDING_PARTS)
        metrics = result.metrics
        return ScalingPoint(
            model=cfg.model,
            train_cells=cfg.data.max_train_cells or 0,
            steps=int(metrics["step"]),
            params=counts["total"],
            params_non_embedding=counts["total"] - embedding,
            train_pflops=float(metrics.get("train_pflops", math.nan)),
            val_loss=float(metrics.get("val_loss", math.nan)),
            val_rde_mae=float(metrics.get("val_rde_mae", math.nan)),
            run_id=result.run_id,
        )

    status = "FAILED"
    try:
        points = _run_points(run_point, configs, sweep.concurrent)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table = write_table(points, out / "scaling.csv")
        figure = plot_scaling(points, out / "scaling.png")
        for p in (table, figure):
            client.log_artifact(parent_id, str(p))
        best = min(points, key=lambda p: p.val_loss)
        client.log_metric(parent_id, "best_val_loss", best.val_loss)
        client.set_tag(parent_id, "scfm.best_run", best.run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status)
    return points


def _run_points(run_point, configs: list[PretrainConfig], concurrent: int) -> list[ScalingPoint]:
    """Every point, in sweep order: one after another in this thread (Ctrl-C stops Ray Train as
    usual), or ``concurrent`` at a time in threads that wait on their Ray Train runs (MLflow's
    active run is per thread). After a failure no new point starts; those training finish."""
    if concurrent == 1:
        return [run_point(cfg) for cfg in configs]
    pool = ThreadPoolExecutor(concurrent, thread_name_prefix="scaling-point")
    try:
        return list(pool.map(run_point, configs))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def write_table(points: list[ScalingPoint], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame([p.to_dict() for p in points]).to_csv(path, index=False)
    return path


def plot_scaling(points: list[ScalingPoint], path: Path) -> Path:
    """Validation loss vs non-embedding parameters (a line per data size) and vs training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p, ax_c) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for cells in sorted({p.train_cells for p in points}):
        row = sorted((p for p in points if p.train_cells == cells), key=lambda p: p.params)
        ax_p.plot(
            [p.params_non_embedding for p in row],
            [p.val_loss for p in row],
            "o-",
            label=f"{cells:,} cells",
        )
    for model in dict.fromkeys(p.model for p in points):
        row = sorted((p for p in points if p.model == model), key=lambda p: p.train_pflops)
        ax_c.plot([p.train_pflops for p in row], [p.val_loss for p in row], "o-", label=model)
    ax_p.set(xscale="log", xlabel="non-embedding parameters", ylabel="validation loss (MSE)")
    ax_c.set(xscale="log", xlabel="training compute (PFLOPs)", ylabel="validation loss (MSE)")
    ax_p.set_title("loss vs model size")
    ax_c.set_title("loss vs compute")
    ax_p.legend(title="train data")
    ax_c.legend(title="model")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
