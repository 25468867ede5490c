"""The scaling runner: nested MLflow runs, a table with parameters and FLOPs, and the plot."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest

from scfm.model import ModelConfig
from scfm.model.params import parameter_counts
from scfm.train.config import PretrainConfig
from scfm.train.scaling import ScalingSweep, point_config
from workflows.scaling import main as scaling_main

pytestmark = pytest.mark.slow


def test_point_configs_set_model_data_and_steps():
    base = PretrainConfig.load(overrides=["train.global_batch_size=8", "data.micro_batch_size=4"])
    sweep = ScalingSweep(models=["tiny", "3m"], train_cells=[20, 64], epochs=2)
    assert sweep.points() == [("tiny", 20), ("tiny", 64), ("3m", 20), ("3m", 64)]
    cfg = point_config(base, sweep, "3m", 20, "t0")
    assert (cfg.model, cfg.data.max_train_cells, cfg.train.max_steps) == ("3m", 20, 5)
    assert cfg.name == "scaling-3m-20-t0" and cfg.tracking.register_as is None
    assert base.model == "tiny" and base.data.max_train_cells is None  # base left alone
    with pytest.raises(KeyError, match="unknown model preset"):
        point_config(base, sweep, "7b", 20, "t0")
    with pytest.raises(ValueError, match="concurrent must be at least 1"):
        ScalingSweep(concurrent=0)


def test_sweep_logs_nested_runs_table_and_plot(ray_local, mlflow_uri, kang_corpus, tmp_path):
    out = tmp_path / "out"
    argv = ["--corpus", kang_corpus, "--models", "tiny", "--cells", "16", "32", "--out", str(out)]
    argv += ["--concurrent", "2"]  # both 1-worker points at once on the 2-CPU local Ray
    argv += [
        f"--set={kv}"
        for kv in (
            "train.global_batch_size=8",
            "data.micro_batch_size=8",
            "data.val_cells=16",
            "train.val_every=100",
            "train.checkpoint_every=100",
            "train.log_every=1",
            f"storage_path={tmp_path / 'ray'}",
        )
    ]
    assert scaling_main(argv) == 0

    table = pd.read_csv(out / "scaling.csv")
    assert table["train_cells"].tolist() == [16, 32] and table["steps"].tolist() == [2, 4]
    counts = parameter_counts(ModelConfig.from_name("tiny"))
    assert (table["params"] == counts["total"]).all()
    non_emb = counts["total"] - counts["token_emb"] - counts["pos_emb"]
    assert (table["params_non_embedding"] == non_emb).all()
    assert table["train_pflops"].iloc[1] > 1.5 * table["train_pflops"].iloc[0] > 0
    assert all(math.isfinite(v) for v in table["val_loss"])
    assert (out / "scaling.png").stat().st_size > 10_000

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("pretrain")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`scfm.stage` = 'scaling'")
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "scaling.csv",
        "scaling.png",
    }
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.info.run_id for r in children) == sorted(table["run_id"])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(table["val_loss"].min())
    assert parent.data.params["concurrent"] == "2"
    # the points trained at the same time: each started before the other ended
    (a, b) = [client.get_run(r).info for r in table["run_id"]]
    assert a.start_time < b.end_time and b.start_time < a.end_time
