"""Pretraining driver: one MLflow run around one Ray Train ``TorchTrainer.fit()``.

``run_pretraining(cfg)`` is what ``workflows/pretrain.py`` and ``scfm pretrain`` call. It works on
a local Ray (started on demand) and unchanged inside ``ray job submit`` on a cluster.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scfm.runtime import ensure_ray
from scfm.storage import absolute_uri, is_uri, join_uri, redact_uri, redact_uri_text, redact_values
from scfm.train.config import PretrainConfig
from scfm.train.ray_train import train_loop_per_worker
from scfm.train.resume import check_resume, latest_checkpoint, resume_checkpoint

__all__ = ["PretrainResult", "build_trainer", "latest_checkpoint", "run_pretraining"]

logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_id: str
    metrics: dict[str, Any]
    checkpoint_dir: str  # the final checkpoint (a model folder + train_state.pt)
    run_dir: str  # Ray Train run directory under storage_path
    model_uri: str | None  # models:/name/version when registered


def corpus_info(corpus) -> dict[str, str]:
    """Corpus version, manifest checksum and build run, linking the run to the data it saw."""
    info = {
        "corpus.uri": redact_uri(corpus.uri),
        "corpus.version": str(corpus.version),
        "corpus.manifest_sha256": corpus.manifest.checksum,
        "corpus.n_cells": str(corpus.n_cells),
    }
    if corpus.manifest.mlflow_run_id:
        info["corpus.mlflow_run_id"] = corpus.manifest.mlflow_run_id
    return info


def build_trainer(
    cfg: PretrainConfig,
    corpus_version: int,
    *,
    mlflow_run: dict | None = None,
    resume_from: str | None = None,
    max_failures: int = 1,
    metadata: dict | None = None,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
):
    """The ``TorchTrainer`` of a run (no side effects until ``fit()``).

    ``train_loop`` is the per-worker function (default :func:`train_loop_per_worker`; recovery
    drills pass a wrapper that fails on purpose).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if cfg.scale.strategy == "fsdp" and not cfg.scale.use_gpu:
        raise ValueError("strategy 'fsdp' needs GPUs (scale.use_gpu=true); use 'ddp' on CPUs")
    return TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "corpus_version": corpus_version,  # pinned: a refresh mid-run changes nothing
            "resume_from": resume_from,
            "mlflow": mlflow_run,
            "metadata": metadata or {},
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scale.num_workers,
            use_gpu=cfg.scale.use_gpu,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=absolute_uri(cfg.storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )


def _checkpoint_uri(path: str, storage_path: str) -> str:
    """Ray's checkpoint path (scheme-less on object stores) as a URI like ``storage_path``."""
    if is_uri(storage_path) and "://" not in path:
        return f"{storage_path.split('://', 1)[0]}://{path.lstrip('/')}"
    return path


def run_pretraining(
    cfg: PretrainConfig,
    *,
    resume: str | None = None,
    max_failures: int = 1,
    tags: dict[str, str] | None = None,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
) -> PretrainResult:
    """Pretrain on ``cfg.data.corpus``; log everything to MLflow; register the final model.

    Parameters
    ----------
    resume
        A Ray Train run directory (its newest complete checkpoint) or a checkpoint folder to
        continue from: weights, optimizer, schedule, step counter and data position are
        restored, on the corpus version the checkpoint trained on
        (:func:`scfm.train.resume.check_resume` refuses incompatible settings first).
    max_failures
        Worker failures Ray Train recovers from by restarting at the last checkpoint.
    train_loop
        The per-worker function (see :func:`build_trainer`).
    tags
        Extra MLflow run tags (e.g. ``mlflow.parentRunId`` to nest the run under a sweep).
    """
    import mlflow

    from scfm.corpus.loader import open_corpus
    from scfm.tracking import (
        flatten,
        log_corpus_input,
        log_external_model,
        register_artifact,
        start_run,
        tracking_uri,
    )

    cfg = cfg.with_run_name()
    if not cfg.data.corpus:
        raise ValueError("no corpus: set data.corpus (a directory built by `scfm corpus build`)")
    # resolved here, once: workers (and a later `--resume`) may have another cwd
    cfg = replace(
        cfg,
        storage_path=absolute_uri(cfg.storage_path),
        data=replace(cfg.data, corpus=absolute_uri(cfg.data.corpus)),
    )
    resume_from = None
    if resume:
        resume_from = resume_checkpoint(resume)
        logger.info("resuming from %s", redact_uri(resume_from))

    uri = tracking_uri()
    model_cfg = cfg.model_config()
    corpus = check_resume(cfg, resume_from) if resume_from else open_corpus(cfg.data.corpus)
    ensure_ray()  # after the checks: a refused resume starts nothing
    info = corpus_info(corpus)
    run_tags = {
        "scfm.resumed_from": redact_uri(resume_from or ""),
        "scfm.corpus_version": info["corpus.version"],
        "scfm.corpus_uri": info["corpus.uri"],
        "scfm.corpus_run_id": info.get("corpus.mlflow_run_id", ""),
        **(tags or {}),
    }
    with start_run(
        "pretrain",
        experiment=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or cfg.name,
        tags=run_tags,
    ) as run:
        mlflow.log_params(flatten(redact_values({"cfg": cfg.to_dict()})) | info)
        mlflow.log_params({f"model.{k}": v for k, v in model_cfg.to_dict().items()})
        mlflow.log_text(redact_uri_text(cfg.to_yaml()), "config/pretrain.yaml")
        log_corpus_input(
            redact_uri(corpus.uri),
            corpus.version,
            info["corpus.manifest_sha256"],
            context="training",
            n_cells=corpus.n_cells,
        )
        trainer = build_trainer(
            cfg,
            corpus.version,
            mlflow_run={"tracking_uri": uri, "run_id": run.info.run_id},
            resume_from=resume_from,
            max_failures=max_failures,
            metadata=info,
            train_loop=train_loop,
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"pretraining ended without a checkpoint: {result.error}")
        checkpoint_dir = _checkpoint_uri(result.checkpoint.path, cfg.storage_path)
        with result.checkpoint.as_directory() as d:
            mlflow.log_artifacts(d, "model")
        # the checkpoint folder as a logged model (the UI's Models column), then registered
        logged = log_external_model(
            run,
            "model",
            f"scfm-{model_cfg.name}",
            {"preset": model_cfg.name, "step": (result.metrics or {}).get("step", "")} | info,
        )
        model_uri = None
        if cfg.tracking.register_as:
            model_uri = register_artifact(
                run,
                "model",
                cfg.tracking.register_as,
                "scfm xTrimoGene checkpoints",
                model_id=logged.model_id if logged else None,
            )
            mlflow.set_tag("scfm.model_uri", model_uri)
        metrics = dict(result.metrics or {})
        return PretrainResult(
            run_id=run.info.run_id,
            metrics=metrics,
            checkpoint_dir=checkpoint_dir,
            run_dir=join_uri(cfg.storage_path, cfg.name),
            model_uri=model_uri,
        )


def download_model(model_uri: str, dst: str | None = None) -> Path:
    """Fetch a registered checkpoint folder (``models:/name/version``) to a local directory."""
    import mlflow

    dst = dst or tempfile.mkdtemp(prefix="scfm-model-")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst))
