"""MLflow outages (issue 16 item 7): the package's real ``mlflow server`` on 127.0.0.1, killed.

Metrics that cannot be sent by the end are written to a file, never dropped silently; a corpus
build whose MLflow server dies after the commit still succeeds (exit code 0). Training through
an outage is checked on the shared pretraining run of ``test_ray_pretrain.py``, which runs
before this file and leaves the server up; the corpus build kills it, and the logger test needs
it down.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from scfm.corpus.sources import H5ADSource, WorkUnit


@dataclass
class KillServerSource(H5ADSource):
    """Test-only hook: reading block ``at_block`` SIGKILLs the MLflow server (pid in a file)."""

    pid_file: str = ""
    at_block: int = 1

    def read(self, unit: WorkUnit):
        if unit.block == self.at_block:
            os.killpg(int(Path(self.pid_file).read_text()), signal.SIGKILL)
        return super().read(unit)


def test_corpus_build_succeeds_when_mlflow_dies_after_its_run_opened(
    mlflow_server_up, tmp_path, monkeypatch
):
    from scfm import datasets
    from scfm.corpus.build import BuildConfig
    from scfm.corpus.build_report import build_and_log
    from scfm.corpus.loader import open_corpus

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast once it is gone
    (tmp_path / "pid").write_text(str(mlflow_server_up.proc.pid))
    src = KillServerSource(
        paths=[str(datasets.fetch("kang2018"))], pid_file=str(tmp_path / "pid"), at_block=1
    )
    cfg = BuildConfig(
        output=str(tmp_path / "c"), sources=[src], block_cells=1000, executor="local",
        progress=False,
    )  # fmt: skip
    result = build_and_log(cfg)
    mlflow_server_up.proc.wait(timeout=20)
    mlflow_server_up.proc = None
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
    mlflow_server, tmp_path, caplog
):
    from scfm.tracking import AsyncMetricLogger

    server = mlflow_server
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
