"""Fixtures for the downstream-task tests: real labelled data sets, their splits, tiny backbones.

Kang PBMC is split as in the critics' out-of-distribution setting (train on control, test on
IFN-β-stimulated cells); pbmc68k gets a stratified random split. Embedding-based tests use a
seeded, stratified quarter of Kang so the tiny encoder runs in seconds on 2 shared cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scfm import datasets
from scfm.data.io import read_counts
from scfm.tasks.labelled import SplitConfig, labelled_data, make_split

KANG_SPLIT = SplitConfig(split_key="condition", train_value="control", test_value="stimulated")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch and one BLAS thread: the ops are small and the box's two cores are shared.

    With two OpenBLAS threads spinning for a busy core, the PCA baseline ran 6× slower.
    """
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def kang():
    adata = read_counts(datasets.fetch("kang2018"))
    data = labelled_data(adata, "cell_type", source="kang2018")
    return data, make_split(data, KANG_SPLIT)


@pytest.fixture(scope="session")
def pbmc68k():
    adata = read_counts(datasets.fetch("pbmc68k_counts"))
    data = labelled_data(adata, "bulk_labels", source="pbmc68k_counts")
    return data, make_split(data, SplitConfig(test_size=0.3, seed=0))


@pytest.fixture(scope="session")
def kang_quarter(kang):
    """A quarter of Kang's cells (stratified by condition × cell type, seeded), with its split."""
    data, _ = kang
    rng = np.random.default_rng(0)
    strata = data.obs["condition"].astype(str).to_numpy() + "|" + data.labels
    keep = np.sort(
        np.concatenate(
            [
                rng.permutation(np.flatnonzero(strata == s))[: (strata == s).sum() // 4]
                for s in np.unique(strata)
            ]
        )
    )
    adata = data.to_anndata()[keep].copy()
    quarter = labelled_data(adata, "cell_type", source="kang2018 (quarter)")
    return quarter, make_split(quarter, KANG_SPLIT)


@pytest.fixture(scope="session")
def tiny_trained(kang):
    """A tiny model pretrained for a few RDA steps on Kang's cells (labels unused)."""
    from scfm.data.genes import GeneVocab
    from scfm.tasks.models import briefly_pretrain

    data, _ = kang
    vocab_counts = GeneVocab.load().map(data.var_names).apply(data.counts)
    totals = np.asarray(data.counts.sum(axis=1)).ravel()
    return briefly_pretrain(vocab_counts, totals, steps=3, batch_size=4, seed=0, device="cpu")


@pytest.fixture(scope="session")
def kang_quarter_embeddings(kang_quarter, tiny_trained):
    """Cell embeddings of a quarter of Kang by the briefly trained tiny model."""
    from scfm.tasks.models import embed_cells

    data, _ = kang_quarter
    emb, _ = embed_cells(data.to_anndata(), tiny_trained, device="cpu")
    return emb
