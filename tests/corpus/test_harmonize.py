from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scfm import datasets
from scfm.corpus.harmonize import (
    SCHEMA,
    CellBlock,
    map_block,
    pack_block,
    split_of,
)
from scfm.corpus.qc import DROP_REASONS, CellStats, QCConfig, count_reasons, drop_reasons
from scfm.data.genes import gene_mapping
from scfm.data.io import read_counts
from scfm.data.validate import InputValidationError


@pytest.fixture(scope="module")
def kang():
    return read_counts(datasets.fetch("kang2018"))


def test_vocab_mapping_equals_genes_apply_including_collisions(kang, vocab):
    # Append the lower-case twin of a real gene: both map to one vocabulary gene (a collision).
    X = sp.hstack([kang.X, kang.X[:, [list(kang.var_names).index("CD3E")]]], format="csr")
    genes = [*kang.var_names, "cd3e"]
    mapping = gene_mapping(vocab, genes)
    assert mapping.report.n_collisions == 1
    rows, stats = map_block(X, mapping)
    ours, ref = rows.to_csr(len(vocab)), mapping.apply(X)
    assert ours.has_sorted_indices and rows.indices.dtype == np.int16
    assert np.array_equal(ours.indptr, ref.indptr)
    assert np.array_equal(ours.indices, ref.indices)
    assert np.array_equal(ours.data, ref.data)
    cd3e = vocab.index("CD3E")
    col = np.asarray(kang.X[:, list(kang.var_names).index("CD3E")].todense()).ravel()
    assert np.array_equal(np.asarray(ours[:, cd3e].todense()).ravel(), 2 * col)
    # QC numbers: totals over all input genes, expressed genes before / after the mapping.
    assert np.allclose(stats.total_counts, np.asarray(X.sum(axis=1)).ravel())
    assert np.array_equal(stats.n_genes_input, np.diff(X.indptr))
    assert np.array_equal(stats.n_genes_vocab, np.diff(ref.indptr))
    mt = [i for i, g in enumerate(genes) if g.upper().startswith("MT-")]
    assert np.allclose(stats.mito_counts, np.asarray(X[:, mt].sum(axis=1)).ravel())


def test_mapping_rejects_values_that_are_not_raw_counts(kang, vocab):
    mapping = gene_mapping(vocab, kang.var_names)
    logged = kang.X[:50].astype(np.float32)
    logged.data = np.log1p(logged.data)
    with pytest.raises(InputValidationError, match="looks log-normalized; pass raw counts"):
        map_block(logged, mapping)
    negative = kang.X[:50].astype(np.float32)
    negative.data[7] = -3
    with pytest.raises(InputValidationError, match="negative values"):
        map_block(negative, mapping)
    with pytest.raises(InputValidationError, match="empty"):
        map_block(sp.csr_matrix((0, kang.n_vars), dtype=np.float32), mapping)


def test_qc_first_failing_reason_and_arithmetic():
    stats = CellStats(
        total_counts=np.array([0, 500, 500, 50, 5000, 800, 900.0]),
        n_genes_input=np.array([0, 150, 9000, 300, 400, 300, 300]),
        n_genes_vocab=np.array([0, 150, 9000, 300, 400, 300, 0]),
        mito_counts=np.array([0, 0, 0, 0, 4000, 10, 0.0]),
    )
    cfg = QCConfig(min_genes=200, max_genes=6000, min_counts=100, max_mito_fraction=0.2)
    reason = drop_reasons(stats, cfg)
    names = [DROP_REASONS[r] if r >= 0 else "kept" for r in reason]
    assert names == [
        "no_counts",
        "min_genes",
        "max_genes",
        "min_counts",
        "max_mito_fraction",
        "kept",
        "no_vocab_genes",
    ]
    counts = count_reasons(reason)
    assert sum(counts.values()) + int((reason < 0).sum()) == len(reason)
    # paper default: more than 200 genes; exactly 200 is dropped
    edge = CellStats(
        np.array([10.0, 10.0]), np.array([200, 201]), np.array([200, 201]), np.zeros(2)
    )
    assert drop_reasons(edge, QCConfig()).tolist() == [DROP_REASONS.index("min_genes"), -1]


def test_mapped_block_packs_counts_exactly(kang, vocab):
    mapping = gene_mapping(vocab, kang.var_names)
    block = CellBlock(kang.X, kang.var_names.to_numpy(), kang.obs_names.to_numpy(), kang.obs)
    rows, stats = map_block(block.X, mapping)
    hb = pack_block(
        block, rows, stats, source="h5ad", dataset_id="kang", qc=QCConfig(min_genes=300)
    )
    assert hb.table.schema.equals(SCHEMA, check_metadata=False)
    assert hb.n_kept + sum(hb.dropped.values()) == hb.n_in == 1975
    assert hb.dropped["min_genes"] == int((np.diff(kang.X.indptr) <= 300).sum()) > 0
    expected = mapping.apply(kang.X)[hb.kept]
    got_idx = hb.table.column("gene_idx").combine_chunks()
    got_cnt = hb.table.column("counts").combine_chunks()
    assert np.array_equal(got_idx.offsets.to_numpy(), expected.indptr)
    assert np.array_equal(got_idx.values.to_numpy(), expected.indices)
    assert np.array_equal(got_cnt.values.to_numpy(), expected.data.astype(np.float32))
    # total_counts is before vocabulary restriction (all 6,998 genes)
    totals = np.asarray(kang.X.sum(axis=1)).ravel()[hb.kept]
    assert np.array_equal(hb.table.column("total_counts").to_numpy(), totals)
    assert (hb.table.column("n_genes").to_numpy() == np.diff(expected.indptr)).all()
    assert hb.table.column("cell_id")[0].as_py() == f"h5ad:kang:{kang.obs_names[hb.kept][0]}"
    assert set(hb.table.column("cell_type").to_pylist()) == set(kang.obs["cell_type"].astype(str))


def test_split_is_deterministic_and_close_to_the_fraction():
    ids = [f"census:ds:{i}" for i in range(20000)]
    a, b = split_of(ids, 0.1), split_of(list(reversed(ids)), 0.1)
    assert np.array_equal(a, b[::-1])
    assert 0.09 < (a == "val").mean() < 0.11
    assert (split_of(ids, 0.0) == "train").all()
