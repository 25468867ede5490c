"""Real-data fixtures shared by test packages (imported from their conftest files)."""

from __future__ import annotations

import pytest

from scfm import datasets
from scfm.data.genes import GeneVocab
from scfm.data.io import read_counts
from scfm.data.packed import PackedCells


def pack_rows(X, total_counts=None) -> PackedCells:
    """Packed cells from a cells × 19,264 CSR matrix (totals: its row sums unless given)."""
    return PackedCells.from_csr(X, total_counts)


@pytest.fixture(scope="session")
def kang_vocab_counts():
    """Real Kang PBMC counts mapped onto the vocabulary (cells × 19,264 CSR)."""
    adata = read_counts(datasets.fetch("kang2018"))
    return GeneVocab.load().map(adata.var_names).apply(adata.X)


@pytest.fixture(scope="session")
def kang_corpus(tmp_path_factory) -> str:
    """A real corpus built by the corpus pipeline from the Kang h5ad (in-process, no MLflow)."""
    from scfm.corpus.build import BuildConfig, build_corpus
    from scfm.corpus.sources import H5ADSource

    root = tmp_path_factory.mktemp("corpus")
    result = build_corpus(
        BuildConfig(
            output=str(root),
            sources=[H5ADSource(paths=[str(datasets.fetch("kang2018"))], name="kang")],
            block_cells=1000,
            val_fraction=0.1,
            executor="local",
            mlflow=False,
            progress=False,
        )
    )
    assert result.exit_code == 0
    return str(root)
