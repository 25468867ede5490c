"""Inference fixtures: real Kang PBMC cells and a tiny seeded model saved as a checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scfm import datasets
from scfm.data.io import read_counts
from scfm.model import ModelConfig, XTrimoGene, save_checkpoint

N_CELLS = 48  # real cells, enough for batches of mixed lengths (≈ 100-800 nonzero genes)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: small ops, shared 2-core box (see tests/model/conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def kang_full():
    """All 1,975 Kang PBMC cells, raw counts (CSR int32), gene symbols."""
    return read_counts(datasets.fetch("kang2018"))


@pytest.fixture
def kang(kang_full):
    """A fresh in-memory copy of the first cells (tests may write obsm / uns / layers)."""
    return kang_full[:N_CELLS].copy()


@pytest.fixture(scope="session")
def tiny_model() -> XTrimoGene:
    torch.manual_seed(0)
    return XTrimoGene(ModelConfig.from_name("tiny")).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """The tiny model as an scfm checkpoint folder."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", tiny_model)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """An even smaller model (one encoder layer of width 16) for whole-corpus runs."""
    torch.manual_seed(1)
    cfg = dataclasses.replace(
        ModelConfig.from_name("tiny"), name="micro", enc_dim=16, enc_depth=1, enc_heads=2,
        enc_ffn_dim=32,
    )  # fmt: skip
    model = XTrimoGene(cfg).eval()
    return model, save_checkpoint(tmp_path_factory.mktemp("ckpt") / "micro", model)
