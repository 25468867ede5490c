"""The pretraining loop in plain torch: :func:`fit` and its pieces (a step, validation).

``fit(model, batches, cfg, state=..., report=...)`` owns what a training run must get right:
restoring a :class:`TrainState` (optimizer, schedule, step, epoch, data position, every rank's
RNG), the RDA collate with per-rank randomness, gradient accumulation, validation at its cadence,
FAVOR+ projection redraws, throughput metrics, and the checkpoint payload. It calls ``report``
after every step; the caller decides what to log and where checkpoints go.

No Ray here: :mod:`scfm.train.ray_train` is a thin adapter around :func:`fit` for Ray Train, and
tests run :func:`fit` alone on one CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from scfm.data.packed import PackedCells
from scfm.model.rda import CellBatch, RDAConfig, collate, masked_mse
from scfm.runtime import autocast, resolve_precision
from scfm.train import distributed as dist
from scfm.train.config import PretrainConfig

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    loss: float  # mean masked MSE over the micro-batches of the step
    grad_norm: float  # before clipping
    lr: float
    cells: int
    tokens: int  # encoder tokens (non-padding), the work that scales with sparsity
    seconds: float


def train_step(
    model: nn.Module,
    micro_batches: list[CellBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    device: torch.device,
    precision: str = "fp32",
    grad_clip: float | None = 1.0,
) -> StepResult:
    """One optimizer step over ``micro_batches`` (gradient accumulation).

    Under DDP, gradients are all-reduced only on the last micro-batch (``no_sync`` before it).
    """
    start = time.perf_counter()
    model.train()
    n = len(micro_batches)
    total_loss, cells, tokens = 0.0, 0, 0
    for i, mb in enumerate(micro_batches):
        mb = mb.to(device, non_blocking=True)
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(device, precision):
                pred = model(*mb.encoder_inputs(), mb.masked)
            loss = masked_mse(pred, mb.target, mb.masked) / n
            loss.backward()
        total_loss += float(loss.detach())
        cells += mb.batch_size
        tokens += int((~mb.padding_mask).sum())
    if grad_clip:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    else:
        grad_norm = float(
            torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
            )
        )
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total_loss, grad_norm, lr, cells, tokens, time.perf_counter() - start)


def redraw_projections_if_due(
    model: nn.Module, calls_before: int, calls_after: int, every: int, seed: int
) -> bool:
    """Redraw the FAVOR+ projections when the count of training forwards crosses a multiple of
    ``every`` (the official Performer redraws every 1,000 training calls).

    The k-th redraw uses a generator seeded with ``(seed, k)``, so every rank draws the same
    matrices and a run resumed from a checkpoint (which stores the projections) continues with
    the same ones and redraws at the same forward counts. Returns whether it redrew.
    """
    if every <= 0 or calls_after // every == calls_before // every:
        return False
    k = calls_after // every
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
    )
    _unwrap(model).redraw_projections(generator)
    return True


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / FSDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def rde_eval_config(rda: RDAConfig) -> RDAConfig:
    """The read-depth-enhancement evaluation: down-sample every eligible cell, mask nothing."""
    return dataclasses.replace(rda, downsample_prob=1.0, mask_nonzero_prob=0.0, mask_zero_prob=0.0)


@torch.inference_mode()
def validation_sums(
    model: nn.Module,
    packed_batches: Iterable[PackedCells],
    rda: RDAConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
    seed: int = 1234,
) -> dict[str, float]:
    """Additive validation statistics (sums and counts), so ranks combine by summing.

    ``loss_sum``/``loss_n``: squared error and count of masked positions of the RDA objective.
    ``rde_abs``/``rde_rel``/``rde_n``: the read-depth-enhancement error: each eligible cell is
    down-sampled, the model predicts at the original depth (T), and predictions are compared with
    the original normalized expression of the genes the cell expressed.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    rde_cfg = rde_eval_config(rda)
    sums = dict.fromkeys(VALIDATION_SUMS, 0.0)
    for packed in packed_batches:
        mb = collate(packed, rda, rng).to(device)
        with autocast(device, precision):
            pred = model(*mb.encoder_inputs(), mb.masked).float()
        n_masked = float(mb.masked.sum())
        sums["loss_sum"] += float(masked_mse(pred, mb.target, mb.masked)) * n_masked
        sums["loss_n"] += n_masked

        rb = collate(packed, rde_cfg, rng).to(device)
        with autocast(device, precision):
            pred = model(*rb.encoder_inputs(), None).float()
        thinned = (rb.S < rb.T).unsqueeze(1)  # cells that were down-sampled
        expressed = (rb.target > 0) & thinned  # (B, 19264)
        diff = (pred - rb.target).abs()[expressed]
        sums["rde_abs"] += float(diff.sum())
        sums["rde_rel"] += float((diff / rb.target[expressed]).sum())
        sums["rde_n"] += float(expressed.sum())
    model.train()
    return sums


VALIDATION_SUMS = ("loss_sum", "loss_n", "rde_abs", "rde_rel", "rde_n")


def validation_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """``val_loss`` (masked MSE) and ``val_rde_mae``/``val_rde_mre`` from summed statistics.

    A metric with nothing to average (e.g. no cell deep enough to down-sample) is NaN.
    """

    def ratio(num: str, den: str) -> float:
        return sums[num] / sums[den] if sums[den] else math.nan

    return {
        "val_loss": ratio("loss_sum", "loss_n"),
        "val_rde_mae": ratio("rde_abs", "rde_n"),
        "val_rde_mre": ratio("rde_rel", "rde_n"),
    }


def validate(
    model: nn.Module,
    packed_batches: Iterable[PackedCells],
    rda: RDAConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
    seed: int = 1234,
) -> dict[str, float]:
    """Validation metrics over packed batches, with fixed randomness (one process)."""
    sums = validation_sums(
        model, packed_batches, rda, device=device, precision=precision, seed=seed
    )
    return validation_metrics(sums)


def micro_batches(
    packed: Iterator[PackedCells], rda: RDAConfig, rng: np.random.Generator, n: int
) -> list[CellBatch] | None:
    """Collate the next ``n`` packed batches, or None when the iterator is exhausted."""
    out = []
    for _ in range(n):
        try:
            out.append(collate(next(packed), rda, rng))
        except StopIteration:
            return None
    return out


# ------------------------------------------------------------------------------------- fit
class Batches(Protocol):
    """A rank's training data: the packed cells of an epoch, from a data position on.

    ``epoch(e, skip)`` must yield the same batches for the same ``e`` every time it is called
    (a seeded shuffle), so a restored run continues exactly where it stopped.
    """

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[PackedCells]: ...


@dataclass
class TrainState:
    """Where a run stands: enough to continue it exactly (beside the model's weights)."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # packed batches of this epoch consumed (per rank)
    rng: list[dict] = field(default_factory=list)  # every rank's numpy generator state
    optimizer: dict | None = None
    scheduler: dict | None = None
    config: dict = field(default_factory=dict)  # the PretrainConfig the state was made with

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class CheckpointPayload:
    """What a checkpoint holds: full model weights (plain keys, CPU) and the train state."""

    model_state: dict[str, torch.Tensor]
    state: TrainState


Report = Callable[[dict[str, float], int, CheckpointPayload | None], None]


def fit(
    model: nn.Module,
    batches: Batches,
    cfg: PretrainConfig,
    *,
    device: torch.device,
    val: Callable[[], Iterable[PackedCells]] | None = None,
    state: TrainState | None = None,
    report: Report | None = None,
    rank: int = 0,
    world: int = 1,
) -> TrainState:
    """Train ``model`` (on ``device``, possibly DDP/FSDP-wrapped) to ``cfg.train.max_steps``.

    Parameters
    ----------
    batches
        This rank's training data (:class:`Batches`).
    val
        Returns this rank's validation batches (a fresh iterable per call); None = no validation.
    state
        Restore from this state (the model's weights are the caller's to load).
    report
        ``report(metrics, step, checkpoint)`` after every step (step 0: the untrained model's
        validation, or ``restored_step`` when restored); ``checkpoint`` is a
        :class:`CheckpointPayload` at ``checkpoint_every`` and the last step, else None. Called
        on every rank; every rank takes part in building the payload (collectives), rank 0 has
        to persist it.

    Returns
    -------
    TrainState
        The state after the last step.
    """
    from scfm.train.optim import build_optimizer, build_scheduler
    from scfm.train.throughput import ThroughputMeter

    train = cfg.train
    precision = resolve_precision(train.precision, device)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    rng = np.random.default_rng([train.seed, rank])
    step = epoch = position = 0
    if state is not None:
        if state.optimizer is not None:
            dist.restore_optimizer(model, optimizer, state.optimizer)
        if state.scheduler is not None:
            scheduler.load_state_dict(state.scheduler)
        step, epoch, position = state.step, state.epoch, state.position
        if len(state.rng) == world:  # same world size: continue each rank's random stream
            rng.bit_generator.state = state.rng[rank]
        log.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, step, epoch, position)
    report = report or (lambda metrics, step, checkpoint: None)

    def validate_now() -> dict[str, float]:
        sums = validation_sums(model, val(), cfg.data.rda, device=device, precision=precision)
        return validation_metrics(dist.all_reduce_sum(sums))

    if state is not None:
        report({"restored_step": float(step)}, step, None)
    elif val is not None:
        report(validate_now(), 0, None)  # the untrained model: the baseline to beat
    accum = cfg.grad_accum_steps
    meter = ThroughputMeter(cfg.model_config(), device)
    it = batches.epoch(epoch, position)
    empty_epochs = 0
    while step < train.max_steps:
        t_data = time.perf_counter()
        mbs = micro_batches(it, cfg.data.rda, rng, accum)
        meter.add_data_time(time.perf_counter() - t_data)
        if mbs is None:
            empty_epochs = empty_epochs + 1 if position == 0 else 0
            if empty_epochs > 1:
                raise RuntimeError(
                    f"rank {rank} got no training batch in a whole epoch: fewer training cells "
                    f"than {accum} micro-batches of {cfg.data.micro_batch_size}; use a larger "
                    "corpus or smaller batches"
                )
            epoch, position = epoch + 1, 0
            it = batches.epoch(epoch, 0)
            continue
        position += accum
        res = train_step(
            model, mbs, optimizer, scheduler, device=device, precision=precision,
            grad_clip=train.grad_clip,
        )  # fmt: skip
        step += 1
        meter.add_step(res)
        redraw_projections_if_due(
            model, (step - 1) * accum, step * accum, train.redraw_every, train.seed
        )
        metrics: dict[str, float] = {"step": step, "epoch": epoch, "loss": res.loss}
        is_last = step == train.max_steps
        if step % train.log_every == 0 or is_last:
            metrics |= {"lr": res.lr, "grad_norm": res.grad_norm} | meter.flush(world)
        if val is not None and (step % train.val_every == 0 or is_last):
            metrics |= validate_now()
        payload = None
        if step % train.checkpoint_every == 0 or is_last:
            payload = checkpoint_payload(
                model, optimizer, scheduler, TrainState(step, epoch, position), rng, cfg, world
            )
        report(metrics, step, payload)
    rngs = dist.all_gather_objects(rng.bit_generator.state, world)
    return TrainState(step, epoch, position, rngs, config=cfg.to_dict())


def checkpoint_payload(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    where: TrainState,
    rng: np.random.Generator,
    cfg: PretrainConfig,
    world: int,
) -> CheckpointPayload:
    """Full weights and train state (a collective: every rank calls it)."""
    model_sd, optim_sd = dist.full_state_dicts(model, optimizer, cfg.scale.strategy)
    state = TrainState(
        step=where.step,
        epoch=where.epoch,
        position=where.position,
        rng=dist.all_gather_objects(rng.bit_generator.state, world),
        optimizer=_snapshot(optim_sd),
        scheduler=scheduler.state_dict(),
        config=cfg.to_dict(),
    )
    return CheckpointPayload(_snapshot(dist.strip_wrapper_prefix(model_sd)), state)


def _snapshot(obj: Any) -> Any:
    """A copy with every tensor cloned to CPU: training goes on updating the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj
