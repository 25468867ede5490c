"""Fixtures for the model tests: synthetic loader batches and a tiny model.

Cells are kept short (tens to a few hundred expressed genes) because the decoder always spans all
19,266 positions; that keeps every test on the 2-core CI box in the sub-second range.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from scfm.data.packed import PackedCells
from scfm.model.config import N_GENES, ModelConfig
from scfm.model.xtrimogene import XTrimoGene

LoaderBatch = PackedCells


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run the model tests on one intra-op thread.

    The ops here are small, so a second thread buys little, and on a shared 2-core box an
    OpenMP team that spins waiting for a busy core slowed the overfit test tenfold.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_loader_batch(
    n_cells: int,
    n_genes: tuple[int, int] = (20, 120),
    seed: int = 0,
    extra_total: float = 0.1,
    mean_count: float = 3.0,
) -> LoaderBatch:
    """A batch in the corpus loader's packed format (CSR with sorted gene indices per cell).

    Counts are 1 + negative binomial; ``total_counts`` adds ``extra_total`` (fraction) of counts
    outside the vocabulary, as real cells have.
    """
    rng = np.random.default_rng(seed)
    gene_idx, counts, offsets, totals = [], [], [0], []
    for _ in range(n_cells):
        n = int(rng.integers(n_genes[0], n_genes[1] + 1))
        genes = np.sort(rng.choice(N_GENES, size=n, replace=False)).astype(np.int32)
        c = (1 + rng.negative_binomial(1, 1 / mean_count, size=n)).astype(np.float32)
        gene_idx.append(genes)
        counts.append(c)
        offsets.append(offsets[-1] + n)
        totals.append(float(np.rint(c.sum() * (1 + extra_total))))
    return PackedCells(
        gene_idx=np.concatenate(gene_idx),
        counts=np.concatenate(counts),
        offsets=np.asarray(offsets, dtype=np.int64),
        total_counts=np.asarray(totals, dtype=np.float64),
    )


@pytest.fixture
def loader_batch() -> Callable[..., LoaderBatch]:
    return make_loader_batch


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig.from_name("tiny")


@pytest.fixture
def tiny_model(tiny_cfg: ModelConfig) -> XTrimoGene:
    torch.manual_seed(0)
    return XTrimoGene(tiny_cfg).eval()


@pytest.fixture
def genes() -> list[str]:
    """A stand-in vocabulary (the real one is not needed to test checkpoint logic)."""
    return [f"G{i}" for i in range(N_GENES)]
