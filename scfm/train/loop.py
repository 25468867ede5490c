"""Pretraining loop pieces in plain torch: one optimizer step, validation, checkpoint state.

No Ray here: :mod:`scfm.train.ray_train` wraps these for Ray Train, and tests drive them on one CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from scfm.model.rda import CellBatch, RDAConfig, collate, masked_mse
from scfm.runtime import autocast


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
    packed_batches: Iterable[Mapping[str, Any]],
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


def evaluate(
    model: nn.Module,
    packed_batches: Iterable[Mapping[str, Any]],
    rda: RDAConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
    seed: int = 1234,
) -> dict[str, float]:
    """Validation metrics over packed loader batches, with fixed randomness (one process)."""
    sums = validation_sums(
        model, packed_batches, rda, device=device, precision=precision, seed=seed
    )
    return validation_metrics(sums)


def micro_batches(
    packed: Iterator[Mapping[str, Any]], rda: RDAConfig, rng: np.random.Generator, n: int
) -> list[CellBatch] | None:
    """Collate the next ``n`` packed batches, or None when the iterator is exhausted."""
    out = []
    for _ in range(n):
        try:
            out.append(collate(next(packed), rda, rng))
        except StopIteration:
            return None
    return out


def training_state(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    step: int,
    epoch: int,
    batches_in_epoch: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Resume state beside the model checkpoint: optimizer, schedule, step, data position, RNG."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "batches_in_epoch": batches_in_epoch,
        "rng": rng.bit_generator.state,
    }
