"""Corpus fixtures: a real Census-shaped SOMA store and helpers that read corpora back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.data.genes import N_GENES


@pytest.fixture(scope="session")
def census_store(tmp_path_factory):
    """The default Census-shaped fixture (6 data sets, 6,082 cells, 300 of them non-primary)."""
    from tests.census_fixture import build_census_fixture

    return build_census_fixture(tmp_path_factory.mktemp("census") / "census")


@pytest.fixture(scope="session")
def vocab():
    from scfm.data.genes import GeneVocab

    return GeneVocab.load()


def corpus_frame(uri: str, version: int | None = None) -> pd.DataFrame:
    """All rows of a corpus version, sorted by cell_id (lists as numpy arrays)."""
    from scfm.corpus.loader import open_corpus

    table = open_corpus(uri, version).read_table()
    df = table.to_pandas()
    return df.sort_values("cell_id").reset_index(drop=True)


def rows_to_csr(df: pd.DataFrame) -> sp.csr_matrix:
    """Corpus rows → cells × 19,264 CSR (for exact comparisons in tests only)."""
    lengths = np.array([len(g) for g in df["gene_idx"]], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([np.asarray(g, np.int64) for g in df["gene_idx"]] or [[]])
    data = np.concatenate([np.asarray(c, np.float64) for c in df["counts"]] or [[]])
    return sp.csr_matrix((data, indices, indptr), shape=(len(df), N_GENES))


def assert_same_corpus(uri_a: str, uri_b: str) -> None:
    """Two corpora hold identical rows (all columns) and identical data set records."""
    from scfm.corpus.loader import open_corpus

    a, b = corpus_frame(uri_a), corpus_frame(uri_b)
    assert len(a) == len(b)
    assert a["cell_id"].tolist() == b["cell_id"].tolist()
    for col in a.columns:
        if col in ("gene_idx", "counts"):
            assert all(np.array_equal(x, y) for x, y in zip(a[col], b[col], strict=True)), col
        else:
            pd.testing.assert_series_equal(a[col], b[col], check_names=False)
    ma, mb = open_corpus(uri_a).manifest, open_corpus(uri_b).manifest

    def comparable(m):
        keep = (
            "source",
            "dataset_id",
            "version",
            "n_cells_in",
            "n_cells_kept",
            "dropped",
            "fingerprint",
            "n_cells_val",
        )
        return [
            {k: getattr(d, k) for k in keep} | {"shards": [s.path for s in d.shards]}
            for d in m.datasets
        ]

    assert comparable(ma) == comparable(mb)
    assert [(q.source, q.dataset_id) for q in ma.quarantined] == [
        (q.source, q.dataset_id) for q in mb.quarantined
    ]


def assert_arithmetic(manifest) -> None:
    """Every input cell is kept or dropped under exactly one reason, per data set and in total."""
    for d in manifest.datasets:
        assert d.n_cells_kept + sum(d.dropped.values()) == d.n_cells_in, d.dataset_id
        assert sum(s.n_cells for s in d.shards) == d.n_cells_kept
    t = manifest.totals
    assert t["n_cells_kept"] + sum(t["dropped"].values()) == t["n_cells_in"]
    assert t["n_cells_train"] + t["n_cells_val"] == t["n_cells_kept"]
