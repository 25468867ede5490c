"""Ray Train adapter: each worker runs :func:`scfm.train.loop.fit` over its share of the corpus.

Each worker reads its own share of the pinned corpus version directly
(:class:`scfm.corpus.shuffled.ShuffledBatches`: corpus-wide shuffle, node-local training cache,
reader threads; no Ray Data in the training path). The adapter restores Ray's checkpoint (or
``--resume``), wraps the model for DDP/FSDP, and turns :func:`fit`'s reports into
``ray.train.report`` calls, checkpoint folders (model folder + ``train_state.pt``, written by
rank 0) and MLflow metrics (rank 0).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scfm.model.checkpoint import read_checkpoint, save_checkpoint
from scfm.model.xtrimogene import XTrimoGene
from scfm.train.config import PretrainConfig
from scfm.train.loop import CheckpointPayload, TrainState, fit
from scfm.train.resume import TRAIN_STATE_FILE, write_complete_marker

logger = logging.getLogger(__name__)

# test hooks see every report: (metrics, step, restored, rank, world); a recovery drill raises
ReportHook = Callable[[dict[str, float], int, bool, int, int], None]


def train_loop_per_worker(config: dict[str, Any], report_hook: ReportHook | None = None) -> None:
    """Ray Train worker: build, restore, then :func:`fit` with Ray reporting."""
    import ray.train
    import ray.train.torch

    cfg = PretrainConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical init everywhere; DDP also broadcasts rank 0
    device = ray.train.torch.get_device()
    model = XTrimoGene(cfg.model_config())
    ckpt = ray.train.get_checkpoint()  # after a worker failure; else an explicit --resume
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint(config["resume_from"])
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            model.load_state_dict(read_checkpoint(d)["state_dict"])
            state = TrainState.from_dict(torch.load(Path(d) / TRAIN_STATE_FILE, weights_only=True))
    if cfg.train.compile_attention:
        model.decoder.compile_attention()
    model = ray.train.torch.prepare_model(model, parallel_strategy=cfg.scale.strategy)
    if cfg.train.compile:
        model = torch.compile(model)
    tracker = _RankZeroTracker(config.get("mlflow"), rank)
    metadata = config.get("metadata", {})

    def report(metrics: dict[str, float], step: int, payload: CheckpointPayload | None) -> None:
        if report_hook is not None:
            report_hook(metrics, step, state is not None, rank, world)
        tracker.log(metrics, step)
        if payload is None:
            if step and step % cfg.train.log_every == 0:
                ray.train.report(metrics)
            return
        tracker.flush()
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                _write_checkpoint(d, payload, cfg, metadata)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    data = worker_batches(cfg, config.get("corpus_version"), rank, world)
    fit(
        model,
        data,
        cfg,
        device=device,
        val=lambda: data.val_batches(cfg.data.val_cells),
        state=state,
        report=report,
        rank=rank,
        world=world,
    )
    tracker.close()


def worker_batches(cfg: PretrainConfig, version: int | None, rank: int, world: int):
    """This worker's :class:`~scfm.corpus.shuffled.ShuffledBatches` of the pinned version."""
    from scfm.corpus.loader import open_corpus
    from scfm.corpus.shuffled import ShuffledBatches

    d = cfg.data
    return ShuffledBatches(
        open_corpus(d.corpus, version),
        d.micro_batch_size,
        seed=d.shuffle_seed,
        rank=rank,
        world=world,
        buffer_cells=d.buffer_cells,
        max_train_cells=d.max_train_cells,
        reader_threads=d.reader_threads,
        cache=d.cache,
        cache_dir=d.cache_dir or None,
        cache_compression="lz4" if d.cache_lz4 else None,
    )


def _write_checkpoint(
    folder: str, payload: CheckpointPayload, cfg: PretrainConfig, metadata: dict[str, Any]
) -> None:
    """A model folder (``scfm.model.save_checkpoint``) plus ``train_state.pt``."""
    model = XTrimoGene(cfg.model_config())
    model.load_state_dict(payload.model_state)
    meta = {**metadata, "step": payload.state.step, "epoch": payload.state.epoch}
    save_checkpoint(folder, model, metadata=meta)
    torch.save(payload.state.to_dict(), Path(folder) / TRAIN_STATE_FILE)
    write_complete_marker(folder, payload.state.step)  # last: lists every file with its size


class _RankZeroTracker:
    """Logs worker metrics to the driver's MLflow run, from rank 0 only, without blocking.

    Metrics go through :class:`scfm.tracking.AsyncMetricLogger`: buffered, sent by a
    background thread, kept and retried while the server is unreachable, flushed on close.
    """

    def __init__(self, mlflow_cfg: dict | None, rank: int):
        self.logger = None
        if mlflow_cfg and rank == 0:
            from scfm.tracking import AsyncMetricLogger

            self.logger = AsyncMetricLogger(
                mlflow_cfg["tracking_uri"],
                mlflow_cfg["run_id"],
                flush_timeout_s=float(mlflow_cfg.get("flush_timeout_s", 300.0)),
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log({k: v for k, v in metrics.items() if k != "step"}, step)

    def flush(self) -> None:
        """Send what is queued before a checkpoint is committed: a restore from it replays the
        later steps (logged again), so no step's metrics die with a failed attempt."""
        if self.logger is not None:
            self.logger.flush()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
