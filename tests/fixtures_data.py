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
def kang_corpus(tmp_path_factory, kang_vocab_counts) -> str:
    """A small corpus in the shard schema: 96 train + 24 val real Kang cells, two shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpus")
    X = kang_vocab_counts[:120].tocsr()
    X.sort_indices()
    rows = []
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        rows.append(
            {
                "cell_id": f"kang2018:kang:{i}",
                "gene_idx": X.indices[lo:hi].astype(np.int32),
                "counts": X.data[lo:hi].astype(np.float32),
                "total_counts": int(X.data[lo:hi].sum()),
                "split": "val" if i >= 96 else "train",
            }
        )
    schema = pa.schema(
        [
            ("cell_id", pa.string()),
            ("gene_idx", pa.list_(pa.int32())),
            ("counts", pa.list_(pa.float32())),
            ("total_counts", pa.int64()),
            ("split", pa.string()),
        ]
    )
    for shard, part in enumerate((rows[:60], rows[60:])):
        table = pa.Table.from_pylist(part, schema=schema)
        pq.write_table(table, root / f"shard-{shard:05d}.parquet")
    return str(root)
