"""Test-only fault injection for recovery drills: a train loop that fails on purpose.

The library's public signatures carry no fault switches; a drill passes this wrapper as
``run_pretraining(..., train_loop=failing_train_loop(9))``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from scfm.train.ray_train import train_loop_per_worker


def failing_train_loop(fail_at_step: int) -> Callable[[dict], None]:
    """A per-worker loop whose last rank raises once, at ``fail_at_step``, in a run not restored."""

    def loop(config: dict) -> None:
        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if step == fail_at_step and not restored and rank == world - 1:
                raise RuntimeError(f"injected failure at step {step}")

        train_loop_per_worker(config, report_hook=hook)

    return loop


def progress_train_loop(path: str) -> Callable[[dict], None]:
    """A per-worker loop whose rank 0 appends ``step loss wall-time`` to ``path`` at each report."""

    def loop(config: dict) -> None:
        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if rank == 0 and "loss" in metrics:
                with open(path, "a") as f:
                    f.write(f"{step} {metrics['loss']!r} {time.time()}\n")

        train_loop_per_worker(config, report_hook=hook)

    return loop


def killing_train_loop(kill_at_step: int, marker: str) -> Callable[[dict], None]:
    """A per-worker loop whose last rank SIGKILLs its own process at ``kill_at_step``, once.

    The process dies as under the OOM killer (no exception, no cleanup); ``marker`` receives its
    pid first, so the test can tell that the kill happened.
    """
    import os
    import signal

    def loop(config: dict) -> None:
        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if step == kill_at_step and not restored and rank == world - 1:
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        train_loop_per_worker(config, report_hook=hook)

    return loop
