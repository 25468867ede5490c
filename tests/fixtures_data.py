"""Real-data fixtures shared by test packages (imported from their conftest files)."""

from __future__ import annotations

import numpy as np
import pytest

from scfm import datasets
from scfm.genes import GeneVocab
from scfm.io import read_counts


def pack_rows(X) -> dict[str, np.ndarray]:
    """Packed loader batch (the corpus loader's contract) from a cells × 19,264 CSR matrix."""
    X = X.tocsr()
    X.sort_indices()
    return {
        "gene_idx": X.indices.astype(np.int32),
        "counts": X.data.astype(np.float32),
        "offsets": X.indptr.astype(np.int64),
        "total_counts": np.asarray(X.sum(axis=1), dtype=np.float64).ravel(),
    }


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
