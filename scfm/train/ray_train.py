"""Thin Ray Train adapter around :mod:`scfm.train.loop`: one function per worker, one builder.

Data stream from the corpus parquet through Ray Data (``datasets={"train", "val"}``, one shard per
worker, never materialized whole); the RDA collate runs in the worker's data iterator. Rank 0
writes checkpoints (model folder + ``train_state.pt``) through ``ray.train.report`` and logs metrics
to the MLflow run that the driver opened.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scfm.model.checkpoint import read_checkpoint, save_checkpoint
from scfm.model.xtrimogene import XTrimoGene
from scfm.runtime import resolve_precision
from scfm.train.config import PretrainConfig
from scfm.train.loop import (
    micro_batches,
    redraw_projections_if_due,
    train_step,
    training_state,
    validation_metrics,
    validation_sums,
)
from scfm.train.optim import build_optimizer, build_scheduler
from scfm.train.throughput import ThroughputMeter

logger = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"


def _state_dicts(model, optimizer, strategy: str) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state on every rank, for DDP and FSDP alike."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=strategy == "fsdp")
        return get_state_dict(model, optimizer, options=opts)
    return model.state_dict(), optimizer.state_dict()


def _restore_optimizer(model, optimizer, optim_sd: dict) -> None:
    """Inverse of :func:`_state_dicts` for the optimizer (its state is keyed by parameter name)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_sd, options=opts)
    else:
        optimizer.load_state_dict(optim_sd)


def _strip_ddp_prefix(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Sum per-rank statistics over all ranks (validation shards differ in size and content)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(t[i]) for i, k in enumerate(keys)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, restore, stream, step, validate, checkpoint, report."""
    import ray.train
    import ray.train.torch

    from scfm.data.packed import PackedCells

    cfg = PretrainConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical init everywhere; DDP also broadcasts rank 0
    device = ray.train.torch.get_device()
    precision = resolve_precision(cfg.train.precision, device)
    model_cfg = cfg.model_config()
    model = XTrimoGene(model_cfg)

    # Restore: Ray's checkpoint after a worker failure, else an explicit --resume directory.
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint(config["resume_from"])
    state: dict[str, Any] | None = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            payload = read_checkpoint(d)
            model.load_state_dict(payload["state_dict"])
            state = torch.load(Path(d) / TRAIN_STATE_FILE, weights_only=True)
        logger.info("rank %d resumed at step %d", rank, state["step"])

    model = ray.train.torch.prepare_model(model, parallel_strategy=cfg.scale.strategy)
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    step, epoch, position = 0, 0, 0
    rng = np.random.default_rng([cfg.train.seed, rank])
    if state is not None:
        _restore_optimizer(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, position = state["step"], state["epoch"], state["batches_in_epoch"]
        if len(state["rng"]) == world:  # same world size: continue each rank's random stream
            rng.bit_generator.state = state["rng"][rank]

    accum = cfg.grad_accum_steps
    mb_size = cfg.data.micro_batch_size
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def packed(shard, seed: int | None) -> Iterator[dict]:
        for table in shard.iter_batches(
            batch_size=mb_size,
            batch_format="pyarrow",
            drop_last=seed is not None,
            local_shuffle_buffer_size=8 * mb_size if seed is not None else None,
            local_shuffle_seed=seed,
        ):
            yield PackedCells.from_arrow(table)

    def start_epoch(e: int, skip: int) -> Iterator[dict]:
        it = packed(train_shard, cfg.data.shuffle_seed + e)
        for _ in range(skip):  # the data position of a resumed run: skip what was consumed
            next(it, None)
        return it

    def validate() -> dict[str, float]:
        val_batches = packed(val_shard, None)
        local = validation_sums(
            model, val_batches, cfg.data.rda, device=device, precision=precision
        )
        return validation_metrics(_all_reduce_sum(local))

    it = start_epoch(epoch, position)
    tracker = _RankZeroTracker(config.get("mlflow"), rank)
    # Fault injection (tests, chaos drills): the last rank raises once, in a run not restored.
    fail_at = config.get("fail_once_at_step") or 0
    if state is not None:
        tracker.log({"restored_step": step}, step)
    else:
        tracker.log(validate(), 0)  # the untrained model: the baseline validation must beat
    meter = ThroughputMeter(model_cfg, device)
    while step < cfg.train.max_steps:
        t_data = time.perf_counter()
        mbs = micro_batches(it, cfg.data.rda, rng, accum)
        meter.add_data_time(time.perf_counter() - t_data)
        if mbs is None:
            epoch, position = epoch + 1, 0
            it = start_epoch(epoch, 0)
            continue
        position += accum
        res = train_step(
            model,
            mbs,
            optimizer,
            scheduler,
            device=device,
            precision=precision,
            grad_clip=cfg.train.grad_clip,
        )
        step += 1
        meter.add_step(res)
        redraw_projections_if_due(
            model, (step - 1) * accum, step * accum, cfg.train.redraw_every, cfg.train.seed
        )
        if fail_at and step == fail_at and ckpt is None and rank == world - 1:
            raise RuntimeError(f"injected failure at step {step} (fail_once_at_step)")

        metrics: dict[str, float] = {"step": step, "epoch": epoch, "loss": res.loss}
        is_last = step == cfg.train.max_steps
        if step % cfg.train.log_every == 0 or is_last:
            metrics |= {"lr": res.lr, "grad_norm": res.grad_norm} | meter.flush(world)
        if step % cfg.train.val_every == 0 or is_last:
            metrics |= validate()
        tracker.log(metrics, step)

        if step % cfg.train.checkpoint_every == 0 or is_last:
            model_sd, optim_sd = _state_dicts(model, optimizer, cfg.scale.strategy)
            rng_states = _gather_rng(rng, world)
            with tempfile.TemporaryDirectory() as d:
                checkpoint = None
                if rank == 0:
                    cpu_model = XTrimoGene(model_cfg)
                    cpu_model.load_state_dict(_strip_ddp_prefix(model_sd))
                    save_checkpoint(d, cpu_model, metadata={"step": step, "epoch": epoch})
                    ts = training_state(
                        optimizer,
                        scheduler,
                        step=step,
                        epoch=epoch,
                        batches_in_epoch=position,
                        rng=rng,
                    )
                    ts["optimizer"] = optim_sd
                    ts["rng"] = rng_states
                    torch.save(ts, Path(d) / TRAIN_STATE_FILE)
                    checkpoint = ray.train.Checkpoint.from_directory(d)
                ray.train.report(metrics, checkpoint=checkpoint)
        elif step % cfg.train.log_every == 0:
            ray.train.report(metrics)
    tracker.close()


def _gather_rng(rng: np.random.Generator, world: int) -> list[dict]:
    """Every rank's generator state (so a resumed run continues each rank's stream)."""
    state = rng.bit_generator.state
    if world == 1 or not torch.distributed.is_initialized():
        return [state]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, state)
    return out


class _RankZeroTracker:
    """Logs worker metrics to the driver's MLflow run, from rank 0 only."""

    def __init__(self, mlflow_cfg: dict | None, rank: int):
        self.client = None
        if mlflow_cfg and rank == 0:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=mlflow_cfg["tracking_uri"])
            self.run_id = mlflow_cfg["run_id"]

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client = None
