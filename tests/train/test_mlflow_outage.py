"""MLflow outages (issue 16 item 7): a real ``mlflow server`` on 127.0.0.1, stopped and restarted.

Training keeps going while the server is down and every step's metrics reach MLflow once it is
back; metrics that cannot be sent by the end are written to a file, never dropped silently; a
corpus build whose MLflow server dies after the commit still succeeds (exit code 0). The tests
run in file order on one server: training restarts it after its outage, the corpus build kills
it, and the logger test needs it down (one server start fewer than restarting per test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from scfm.corpus.sources import H5ADSource, WorkUnit
from tests.e2e.conftest import BIN, free_port, wait_http


class Server:
    """A restartable ``mlflow server`` (same port, same sqlite store and artifact folder)."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=open(self.root / "server.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_http(f"{self.url}/health", timeout=90, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # an outage, not a clean shutdown
            self.proc.wait(timeout=20)
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow-outage"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def tracking(server, monkeypatch):
    if not server.up:
        server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    yield server
    mlflow.set_tracking_uri(None)


@dataclass
class KillServerSource(H5ADSource):
    """Test-only hook: reading block ``at_block`` SIGKILLs the MLflow server (pid in a file)."""

    pid_file: str = ""
    at_block: int = 1

    def read(self, unit: WorkUnit):
        if unit.block == self.at_block:
            os.killpg(int(Path(self.pid_file).read_text()), signal.SIGKILL)
        return super().read(unit)


@pytest.mark.slow
def test_training_goes_on_through_an_mlflow_outage(tracking, ray_local, kang_corpus, tmp_path):
    from scfm.train.config import PretrainConfig
    from scfm.train.pretrain import run_pretraining
    from tests.train.faults import progress_train_loop

    steps = 14
    cfg = PretrainConfig.load(
        overrides=[
            "model=tiny", f"data.corpus={kang_corpus}", "data.micro_batch_size=4",
            "data.val_cells=24", "train.global_batch_size=8", f"train.max_steps={steps}",
            "train.warmup_steps=2", "train.log_every=2", "train.val_every=7",
            "train.checkpoint_every=7", "scale.num_workers=2", "scale.cpus_per_worker=0.5",
            f"storage_path={tmp_path / 'ray'}", "name=outage",
        ]
    )  # fmt: skip
    progress = tmp_path / "progress.txt"
    progress.touch()

    def reported() -> list[list[str]]:
        return [line.split() for line in progress.read_text().splitlines()]

    events: dict[str, float] = {}

    def outage() -> None:
        while len(reported()) < 3:
            time.sleep(0.1)
        tracking.stop()
        events["down"] = time.time()
        n = len(reported())
        while len(reported()) < n + 4 and len(reported()) < steps:
            time.sleep(0.1)
        events["restart"] = time.time()
        tracking.start()

    t = threading.Thread(target=outage, daemon=True)
    t.start()
    result = run_pretraining(cfg, train_loop=progress_train_loop(str(progress)))
    t.join(timeout=120)
    assert result.metrics["step"] == steps
    rows = reported()
    during = [r for r in rows if events["down"] < float(r[2]) < events["restart"]]
    assert len(during) >= 3  # training went on while MLflow was down
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "loss")
    logged = sorted((m.step, m.value) for m in history)
    assert logged == sorted((int(r[0]), float(r[1])) for r in rows)  # every step, exactly once
    assert [s for s, _ in logged] == list(range(1, steps + 1))


def test_corpus_build_succeeds_when_mlflow_dies_after_its_run_opened(
    tracking, tmp_path, monkeypatch
):
    from scfm import datasets
    from scfm.corpus.build import BuildConfig
    from scfm.corpus.build_report import build_and_log
    from scfm.corpus.loader import open_corpus

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast once it is gone
    (tmp_path / "pid").write_text(str(tracking.proc.pid))
    src = KillServerSource(
        paths=[str(datasets.fetch("kang2018"))], pid_file=str(tmp_path / "pid"), at_block=1
    )
    cfg = BuildConfig(
        output=str(tmp_path / "c"), sources=[src], block_cells=1000, executor="local",
        progress=False,
    )  # fmt: skip
    result = build_and_log(cfg)
    tracking.proc.wait(timeout=20)
    tracking.proc = None
    assert result.exit_code == 0
    # refused, or reset when the kill cut a kept-alive connection: either way a connection error
    assert result.mlflow_run_id and "Connection" in result.mlflow_error, result.mlflow_error
    assert mlflow.active_run() is None  # nothing left dangling for the next run
    c = open_corpus(cfg.output)
    assert c.manifest.mlflow_run_id == result.mlflow_run_id
    assert (
        c.read_table().num_rows
        == c.manifest.totals["n_cells_kept"]
        == 1_975 - sum(c.manifest.totals["dropped"].values())
    )


def test_metrics_logger_never_blocks_warns_once_and_keeps_what_it_cannot_send(
    server, tmp_path, caplog
):
    from scfm.tracking import AsyncMetricLogger

    server.stop()  # down (the previous test killed it already)
    run_id = "0" * 32
    with caplog.at_level("WARNING", logger="scfm.tracking"):
        log = AsyncMetricLogger(
            server.url, run_id, interval_s=0.2, flush_timeout_s=1.0, unsent_dir=str(tmp_path)
        )
        t0 = time.perf_counter()
        for step in range(1, 6):
            log.log({"loss": 1.0 / step}, step)
        assert time.perf_counter() - t0 < 0.05  # no HTTP on the caller's path
        time.sleep(2.0)  # several background attempts
        assert log.n_failures >= 2 and log.pending == 5
        t0 = time.perf_counter()
        assert log.flush(timeout_s=30) == 5  # the server is down: no waiting for it
        assert time.perf_counter() - t0 < 0.5
        assert log.close() == 5
    down = [r for r in caplog.records if "is not taking metrics" in r.message]
    assert len(down) == 1
    lines = (tmp_path / f"mlflow-unsent-{run_id}.jsonl").read_text().splitlines()
    import json

    assert [(d["key"], d["step"], d["value"]) for d in map(json.loads, lines)] == [
        ("loss", s, 1.0 / s) for s in range(1, 6)
    ]


def test_metrics_logger_flush_sends_what_is_queued(tmp_path):
    from scfm.tracking import AsyncMetricLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("flush")).info.run_id
    log = AsyncMetricLogger(uri, run_id, interval_s=60.0)  # no background send before flush
    for step in range(1, 4):
        log.log({"loss": 1.0 / step}, step)
    assert log.flush(timeout_s=30) == 0 and log.pending == 0
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in range(1, 4)]
    assert log.close() == 0
