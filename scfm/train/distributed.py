"""What the training loop needs from ``torch.distributed`` (and nothing when it is not running).

Full (unsharded) model and optimizer state for checkpoints under DDP and FSDP alike, summing
statistics over ranks, gathering every rank's RNG state. Every function works in one plain
process too, so :func:`scfm.train.loop.fit` runs the same with and without Ray Train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str = "ddp"
) -> tuple[dict, dict]:
    """Full model and optimizer state on every rank (CPU-offloaded under FSDP)."""
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=strategy == "fsdp")
        return get_state_dict(model, optimizer, options=opts)
    return model.state_dict(), optimizer.state_dict()


def restore_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of :func:`full_state_dicts` for the optimizer (state keyed by parameter name
    under torch.distributed, by index otherwise)."""
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=opts)
    else:
        optimizer.load_state_dict(state)


def strip_wrapper_prefix(state: dict) -> dict:
    """A DDP / torch.compile state dict with the plain model's keys."""
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Per-rank statistics summed over all ranks (validation shards differ in size)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(t[i]) for i, k in enumerate(keys)}


def all_gather_objects(obj: Any, world: int) -> list[Any]:
    """``obj`` of every rank, in rank order (a one-element list in one process)."""
    if world == 1 or not is_distributed():
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out
