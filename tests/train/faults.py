"""Test-only fault injection for recovery drills: a train loop that fails on purpose.

The library's public signatures carry no fault switches; a drill passes this wrapper as
``run_pretraining(..., train_loop=faulty_train_loop(9, 11, folder, run_dir, 10))``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from scfm.train.ray_train import train_loop_per_worker
from tests.polling import poll_until


def progress_train_loop(path: str) -> Callable[[dict], None]:
    """A per-worker loop whose rank 0 appends ``step loss wall-time`` to ``path`` at each report."""

    def loop(config: dict) -> None:
        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if rank == 0 and "loss" in metrics:
                with open(path, "a") as f:
                    f.write(f"{step} {metrics['loss']!r} {time.time()}\n")

        train_loop_per_worker(config, report_hook=hook)

    return loop


def committed_steps(run_dir: str) -> set[int]:
    """The steps of the checkpoints Ray Train has committed in ``run_dir`` (its checkpoint
    manager's snapshot there; empty before the first)."""
    import json
    from pathlib import Path

    snapshot = Path(run_dir, "checkpoint_manager_snapshot.json")
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or mid-write
        return set()
    return {int(r["metrics"]["step"]) for r in results}


def faulty_train_loop(
    raise_at_step: int, kill_at_step: int, markers: str, run_dir: str, kill_after_commit: int
) -> Callable:
    """A per-worker loop whose last rank fails twice: it raises at ``raise_at_step``, then, in
    the restarted group, SIGKILLs its own process at ``kill_at_step``, once Ray Train has
    committed the step-``kill_after_commit`` checkpoint in ``run_dir`` (the controller polls
    workers for reports: a kill right after a report would lose the report, and the restart
    would go back one checkpoint more; the wait makes the drill deterministic, up to 60 s).

    The kill is a process dying as under the OOM killer (no exception, no cleanup). Each failure
    happens once: it leaves a file in the folder ``markers`` first (``raised``; ``killed.pid``
    with the pid, so the test can tell that the process is gone).
    """
    import os
    import signal
    from pathlib import Path

    def loop(config: dict) -> None:
        raised, killed = Path(markers, "raised"), Path(markers, "killed.pid")

        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            if rank != world - 1:
                return
            if step == raise_at_step and not raised.exists():
                raised.write_text(str(step))
                raise RuntimeError(f"injected failure at step {step}")
            if step == kill_at_step and raised.exists() and not killed.exists():
                poll_until(lambda: kill_after_commit in committed_steps(run_dir), timeout=60)
                killed.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        train_loop_per_worker(config, report_hook=hook)

    return loop
