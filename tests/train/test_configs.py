from __future__ import annotations

from pathlib import Path

import pytest

from scfm.model.params import parameter_counts
from scfm.train.config import PretrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("pretrain_*.yaml"))


def test_there_are_preset_configs():
    assert {p.stem for p in CONFIGS} >= {"pretrain_3m", "pretrain_10m", "pretrain_100m"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_divide_evenly(path):
    cfg = PretrainConfig.load(path)
    assert cfg.model == path.stem.removeprefix("pretrain_")
    assert cfg.grad_accum_steps >= 1
    assert isinstance(cfg.train.lr, float) and cfg.train.lr > 0
    assert parameter_counts(cfg.model_config())["total"] > 0
