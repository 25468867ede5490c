"""Training throughput metrics: cells/s, tokens/s, data wait, CPU use, model FLOPs utilization."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from scfm.model.config import ModelConfig
from scfm.model.flops import TRAIN_FLOPS_PER_FORWARD, forward_flops, peak_flops

if TYPE_CHECKING:
    from scfm.train.loop import StepResult


class ThroughputMeter:
    """Accumulates one worker's steps between two log points and turns them into rates.

    Time counts data loading and optimizer steps only (validation and checkpoints excluded), so
    rates are comparable between runs with different validation intervals. Rates for the whole
    run are the worker's rate times ``world`` (workers run in lockstep under DDP).
    """

    def __init__(self, model_cfg: ModelConfig, device: torch.device) -> None:
        self.model_cfg = model_cfg
        self.device = device
        self.total_flops = 0.0  # since this worker (re)started, all workers
        self.peak = (
            peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        )
        self._reset()

    def _reset(self) -> None:
        self.cells = self.tokens = 0
        self.data_s = self.step_s = 0.0
        self.flops = 0.0
        self._cpu0 = time.process_time()

    def add_data_time(self, seconds: float) -> None:
        self.data_s += seconds

    def add_step(self, res: StepResult) -> None:
        self.cells += res.cells
        self.tokens += res.tokens
        self.step_s += res.seconds
        mean_tokens = res.tokens / max(res.cells, 1)
        per_cell = forward_flops(self.model_cfg, mean_tokens).total * TRAIN_FLOPS_PER_FORWARD
        self.flops += per_cell * res.cells

    def flush(self, world: int) -> dict[str, float]:
        """Rates since the last flush; starts a new interval."""
        busy = self.data_s + self.step_s
        if busy <= 0:
            return {}
        self.total_flops += world * self.flops
        out = {
            "cells_per_s": world * self.cells / busy,
            "tokens_per_s": world * self.tokens / busy,
            "cells_per_s_per_worker": self.cells / busy,
            "data_wait_fraction": self.data_s / busy,
            "cpu_util_cores": (time.process_time() - self._cpu0) / busy,
            "model_tflops_per_s": world * self.flops / busy / 1e12,
            "train_pflops": self.total_flops / 1e15,  # cumulative: x axis of scaling plots
        }
        if self.peak:
            out["mfu"] = self.flops / busy / self.peak
        if self.device.type == "cuda":
            out["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self._reset()
        return out
