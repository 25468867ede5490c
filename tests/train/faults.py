"""Test-only fault injection for recovery drills: a train loop that fails on purpose.

The library's public signatures carry no fault switches; a drill passes this wrapper as
``run_pretraining(..., train_loop=faulty_train_loop(9, 11, marker))``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from scfm.train.ray_train import train_loop_per_worker


def progress_train_loop(path: str) -> Callable[[dict], None]:
    """A per-worker loop whose rank 0 appends ``step loss wall-time`` to ``path`` at each report."""

    def loop(config: dict) -> None:
        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if rank == 0 and "loss" in metrics:
                with open(path, "a") as f:
                    f.write(f"{step} {metrics['loss']!r} {time.time()}\n")

        train_loop_per_worker(config, report_hook=hook)

    return loop


def faulty_train_loop(raise_at_step: int, kill_at_step: int, marker: str) -> Callable[[dict], None]:
    """A per-worker loop whose last rank fails twice: it raises at ``raise_at_step`` in the
    first attempt, then SIGKILLs its own process at ``kill_at_step`` in the restored attempt.

    The kill is a process dying as under the OOM killer (no exception, no cleanup); ``marker``
    receives its pid first, so the test can tell that the kill happened, and so it happens once.
    """
    import os
    import signal

    def loop(config: dict) -> None:
        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if rank != world - 1:
                return
            if step == raise_at_step and not restored:
                raise RuntimeError(f"injected failure at step {step}")
            if step == kill_at_step and restored and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        train_loop_per_worker(config, report_hook=hook)

    return loop
