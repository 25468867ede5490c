"""Test-only hooks for the multi-node drills: where work ran, and a pause to kill a node in.

Both travel to Ray workers by pickling; the library's signatures carry no fault switches.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scfm.corpus.sources import DirectorySource, WorkUnit
from scfm.train.ray_train import train_loop_per_worker
from tests.polling import poll_until

PAUSE_S = 180.0  # longer than any drill waits: the node is removed while its work sleeps


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class Background:
    """``fn()`` in a thread; its return value or exception is kept for the test to check."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by outcome()
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def outcome(self, timeout: float) -> Any:
        """The return value once ``fn`` ends (its exception is raised here)."""
        self._thread.join(timeout=timeout)
        if self.running:
            raise TimeoutError(f"still running after {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.result


def wait_for(pattern: str, folder: Path, job: Background, timeout: float = 120.0) -> Path:
    """The first file matching ``pattern`` in ``folder``; fails as soon as ``job`` has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if not job.running:
            job.outcome(0)  # raises the job's own error
            raise AssertionError(f"the job ended before any {pattern} appeared in {folder}")
        time.sleep(0.2)
    raise TimeoutError(f"no {pattern} in {folder} after {timeout:.0f} s")


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    if not poll_until(condition, timeout, interval=0.5):
        raise TimeoutError(f"condition not met after {timeout:.0f} s")


@dataclass
class GatedDirectorySource(DirectorySource):
    """A :class:`DirectorySource` whose first block of one data set blocks on its first read.

    The blocked read writes ``blocked-<node id>`` into the gate folder and sleeps until its node
    is removed; a retry (after ``removed`` exists) reads normally. The gate folder is a plain
    attribute, not a field: spec, config and fingerprint equal those of a DirectorySource.
    """

    def gate(self, folder: str, dataset_id: str) -> GatedDirectorySource:
        self.__dict__["_gate"] = (folder, dataset_id)
        return self

    def read(self, unit: WorkUnit):
        folder, dataset_id = self.__dict__.get("_gate", ("", ""))
        gate = Path(folder)
        if unit.dataset_id == dataset_id and unit.block == 0 and not (gate / "removed").exists():
            (gate / f"blocked-{_node_id()}").write_text(str(time.time()))
            time.sleep(PAUSE_S)
        return super().read(unit)


def recording_train_loop(log_dir: str, pause_at_step: int | None = None) -> Callable[[dict], None]:
    """A per-worker loop that logs (node, rank, step, restored) of every report to ``log_dir``.

    With ``pause_at_step``, the last rank of a run not yet restored writes
    ``paused-<node id>`` at that step and sleeps, so the test can remove its node.
    """

    def loop(config: dict) -> None:
        node = _node_id()
        folder = Path(log_dir)

        def hook(metrics: dict, step: int, restored: bool, rank: int, world: int) -> None:
            row = {"node": node, "rank": rank, "step": step, "restored": restored}
            with open(folder / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if step == pause_at_step and not restored and rank == world - 1:
                (folder / f"paused-{node}").write_text(str(step))
                time.sleep(PAUSE_S)

        train_loop_per_worker(config, report_hook=hook)

    return loop


def read_reports(log_dir: Path) -> list[dict]:
    rows = []
    for f in sorted(log_dir.glob("rank*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line]
    return rows
