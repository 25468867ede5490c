"""Ray Tune sweeps over a head's search space, with ASHA early stopping and MLflow runs.

``run_sweep(head, data, SweepConfig(...))``:

* one **parent** MLflow run per sweep (experiment ``finetune``) holding the sweep settings, the
  best configuration and its validation metrics, the table of all trials and the best model;
* one **child** run per trial (``mlflow.parentRunId`` tag, so the UI nests them) with the trial's
  configuration and its per-epoch metrics, written from the driver by Ray's
  ``MLflowLoggerCallback`` (works for trials that ASHA stops early, and on a remote cluster);
* trials are scheduled by ASHA on the head's validation metric (``time_attr`` = epochs), each with
  ``cpus_per_trial`` / ``gpus_per_trial``;
* deterministic: the search samples configurations from a seeded generator and every trial seeds
  torch with ``seed``, so the same sweep gives the same trials;
* the best trial's best epoch is saved (``head.pt``, ``weights_only``-loadable), logged under the
  parent run's ``model`` artifacts and registered in the model registry (``register_as``).

Ray is imported only inside these functions.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from scfm.runtime import ensure_ray
from scfm.tasks.base import DataModule, Head, HeadSpec, fit_head, full_config, save_head
from scfm.tracking import register_artifact

logger = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    """Settings of one Ray Tune sweep."""

    num_samples: int = 8  # configurations drawn from the head's search space
    max_epochs: int = 40  # ASHA's max_t
    grace_period: int = 4  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0 = as many as the resources allow
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)  # override search-space entries
    experiment: str = "finetune"
    run_name: str | None = None
    register_as: str | None = None  # model registry name for the best head
    storage_path: str = "results/tune"
    name: str = "scfm-finetune"  # Ray Tune run directory under storage_path
    verbose: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepResult:
    """What a sweep produced."""

    parent_run_id: str
    trial_run_ids: list[str]
    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    model_dir: Path  # the best head, a folder with head.pt
    model_uri: str | None  # models:/name/version when registered
    trials: pd.DataFrame  # one row per trial: config, last and best metric, epochs run


def train_trial(config: dict[str, Any], head: Head, data: DataModule, threads: int) -> None:
    """One trial: train the head, report every epoch, checkpoint when the metric improves."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, threads))

    def report(metrics: dict[str, float], improved: bool, model) -> None:
        if not improved:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_head(tmp, model, config, data.spec(), {"epoch": int(metrics["epoch"])})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    fit_head(head, data, config, report=report)


def param_space(head: Head, cfg: SweepConfig) -> dict[str, Any]:
    """Head defaults ← search space ← fixed values; ``max_epochs`` and ``seed`` from the sweep."""
    space = {**full_config(head, None), **head.search_space(), **cfg.fixed}
    space["max_epochs"] = cfg.max_epochs
    space["seed"] = cfg.seed
    return space


def run_sweep(
    head: Head,
    data: DataModule,
    cfg: SweepConfig,
    *,
    output_dir: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    lineage: Sequence[str] = (),
) -> SweepResult:
    """Tune ``head`` on ``data``; returns the best configuration and the saved best model.

    Parameters
    ----------
    output_dir
        Where the best head is copied (default: ``<storage_path>/<name>/best_model``).
    tags, params
        Extra tags and parameters for the parent run (e.g. data set, backbone).
    lineage
        Model specs of the backbone: a registered one links the parent run to its pretraining
        run and corpus (:func:`scfm.tracking.log_model_lineage`).
    """
    import mlflow
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from scfm.tracking import ensure_experiment, log_params_flat, start_run, tracking_uri

    ensure_ray()
    # keeping only the best checkpoint forces a state snapshot per checkpoint; that is intended
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    storage = Path(cfg.storage_path).resolve()
    uri = tracking_uri()
    ensure_experiment("finetune", cfg.experiment)
    spec: HeadSpec = data.spec()
    with start_run(
        "finetune",
        experiment=cfg.experiment,
        run_name=cfg.run_name or f"{head.task} sweep",
        tags={"scfm.task": head.task, "scfm.sweep": "parent", **(tags or {})},
        lineage=lineage,
    ) as parent:
        parent_id = parent.info.run_id
        log_params_flat({"sweep": cfg.to_dict(), **(params or {})})
        mlflow.log_params(
            {
                "data.n_train": data.size("train"),
                "data.n_val": data.size("val"),
                "head.in_dim": spec.in_dim,
                "head.n_outputs": spec.n_outputs,
            }
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                train_trial, head=head, data=data, threads=int(max(1, cfg.cpus_per_trial))
            ),
            {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(head, cfg),
            tune_config=tune.TuneConfig(
                metric=head.metric,
                mode=head.mode,
                num_samples=cfg.num_samples,
                scheduler=ASHAScheduler(
                    max_t=cfg.max_epochs,
                    grace_period=min(cfg.grace_period, cfg.max_epochs),
                    reduction_factor=cfg.reduction_factor,
                ),
                search_alg=BasicVariantGenerator(
                    random_state=cfg.seed, max_concurrent=cfg.max_concurrent
                ),
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=str(storage),
                verbose=cfg.verbose,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1,
                    checkpoint_score_attribute=head.metric,
                    checkpoint_score_order=head.mode,
                ),
                callbacks=[
                    MLflowLoggerCallback(
                        tracking_uri=uri,
                        experiment_name=cfg.experiment,
                        tags={
                            "mlflow.parentRunId": parent_id,
                            "scfm.stage": "finetune",
                            "scfm.task": head.task,
                            "scfm.sweep": "trial",
                        },
                    )
                ],
            ),
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if len(errors) == len(grid):
            raise RuntimeError(f"every trial of the sweep failed; first error: {errors[0]}")
        best = grid.get_best_result(metric=head.metric, mode=head.mode, scope="all")
        if best.checkpoint is None:
            raise RuntimeError("the best trial saved no checkpoint (no epoch improved its metric)")
        model_dir = Path(output_dir) if output_dir else storage / cfg.name / "best_model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        with best.checkpoint.as_directory() as d:
            shutil.copytree(d, model_dir)
        best_config = {k: best.config[k] for k in sorted(best.config)}
        best_row = _best_row(best.metrics_dataframe, head.metric, head.mode)
        trials = trials_table(grid, head.metric, head.mode)
        mlflow.set_tracking_uri(uri)  # the callback may have changed the process default
        log_params_flat({"best": best_config})
        mlflow.log_metrics(
            {
                f"best_{k}": float(v)
                for k, v in best_row.items()
                if isinstance(v, int | float) and k.startswith(("val_", "train_"))
            }
        )
        mlflow.log_metric("best_epoch", float(best_row.get("epoch", 0)))
        mlflow.log_metric("n_trials", float(len(grid)))
        mlflow.log_metric("n_trials_failed", float(len(errors)))
        mlflow.log_text(trials.to_csv(index=False), "sweep/trials.csv")
        mlflow.log_artifacts(str(model_dir), "model")
        model_uri = None
        if cfg.register_as:
            model_uri = register_artifact(parent, "model", cfg.register_as, "scfm downstream heads")
    client = mlflow.MlflowClient(tracking_uri=uri)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return SweepResult(
        parent_run_id=parent_id,
        trial_run_ids=[r.info.run_id for r in children],
        best_config=best_config,
        best_metrics={k: float(v) for k, v in best_row.items() if isinstance(v, int | float)},
        model_dir=model_dir,
        model_uri=model_uri,
        trials=trials,
    )


def _best_row(df: pd.DataFrame, metric: str, mode: Literal["min", "max"]) -> dict[str, Any]:
    """The reported row (epoch) where the trial's metric was best (first on ties)."""
    col = df[metric]
    idx = col.idxmax() if mode == "max" else col.idxmin()
    return df.loc[idx].to_dict()


def trials_table(grid, metric: str, mode: Literal["min", "max"]) -> pd.DataFrame:
    """One row per trial: its configuration, epochs run, best and last metric, status."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        row = {f"config.{k}": v for k, v in sorted(r.config.items())}
        row["trial_id"] = r.metrics.get("trial_id") if r.metrics else None
        if df is not None and len(df):
            best = _best_row(df, metric, mode)
            row |= {
                "epochs": int(df["epoch"].max()),
                f"best_{metric}": best[metric],
                f"last_{metric}": float(df[metric].iloc[-1]),
                "best_epoch": int(best["epoch"]),
            }
        row["error"] = None if r.error is None else str(r.error)[:200]
        rows.append(row)
    out = pd.DataFrame(rows)
    key = f"best_{metric}"
    if key in out:
        out = out.sort_values(key, ascending=mode == "min", kind="stable").reset_index(drop=True)
    return out
