"""AdamW with decay groups and a linear-warmup cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from scfm.train.config import TrainArgs


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; never decay biases, norms, embedding tables or 1-d parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_table = name.endswith("emb.weight") or "emb_" in name or name.startswith("pos_emb")
        (no_decay if p.ndim < 2 or is_table else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, args: TrainArgs) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel when every parameter is on a GPU."""
    on_cuda = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, args.weight_decay),
        lr=args.lr,
        betas=args.betas,
        fused=on_cuda or None,
    )


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based optimizer step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, args: TrainArgs
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, args.warmup_steps, args.max_steps, args.min_lr_ratio),
    )
