from __future__ import annotations

import numpy as np
import pytest

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.loader import iter_ray_batches, open_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import H5ADSource
from scfm.data.packed import PackedCells

from .conftest import corpus_frame


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "corpus"
    cfg = BuildConfig(
        output=str(out),
        sources=[
            H5ADSource(
                paths=[str(datasets.fetch("kang2018")), str(datasets.fetch("pbmc68k_counts"))]
            )
        ],
        qc=QCConfig(min_genes=100),
        block_cells=500,
        max_cells_per_shard=300,
        val_fraction=0.2,
        executor="local",
        mlflow=False,
    )
    build_corpus(cfg)
    return open_corpus(str(out))


def test_packed_batches_match_rows_and_cover_the_corpus(corpus):
    df = corpus_frame(corpus.uri).set_index("cell_id")
    seen = []
    for batch in corpus.iter_batches(batch_size=256):
        B = len(batch.cell_id)
        assert batch.gene_idx.dtype == np.int32 and batch.counts.dtype == np.float32
        assert batch.offsets.dtype == np.int64 and batch.offsets.shape == (B + 1,)
        assert batch.offsets[0] == 0 and batch.offsets[-1] == len(batch.gene_idx)
        assert batch.total_counts.shape == (B,)
        for i in (0, B - 1):
            lo, hi = batch.offsets[i], batch.offsets[i + 1]
            row = df.loc[batch.cell_id[i]]
            assert np.array_equal(batch.gene_idx[lo:hi], row["gene_idx"])
            assert np.array_equal(batch.counts[lo:hi], row["counts"])
            assert np.all(np.diff(batch.gene_idx[lo:hi]) > 0)  # sorted, unique
        seen += list(batch.cell_id)
    assert sorted(seen) == sorted(df.index)
    sizes = [len(b.cell_id) for b in corpus.iter_batches(batch_size=256)]
    assert sizes[:-1] == [256] * (len(sizes) - 1)  # batches span shard boundaries


def test_split_filter_and_model_collate(corpus):
    val = [c for b in corpus.iter_batches(batch_size=128, split="val") for c in b.cell_id]
    assert len(val) == corpus.n_cells_split("val") > 0
    from scfm.model.rda import collate

    batch = next(corpus.iter_batches(batch_size=16, split="train"))
    cell_batch = collate(batch, generator=0)
    assert cell_batch.batch_size == 16


def test_ray_dataset_reads_the_manifest_shards(corpus, ray_local):
    ds = corpus.ray_dataset(
        split="train", columns=["cell_id", "gene_idx", "counts", "total_counts"]
    )
    n = 0
    for batch in iter_ray_batches(ds, batch_size=200):
        assert batch.offsets[-1] == len(batch.counts)
        n += len(batch.cell_id)
    assert n == corpus.n_cells_split("train")


def test_pack_of_a_sliced_table(corpus):
    t = corpus.read_table().slice(7, 5)
    b = PackedCells.from_arrow(t)
    assert b.offsets[0] == 0 and len(b.cell_id) == 5
    assert np.array_equal(b.gene_idx[: b.offsets[1]], t.column("gene_idx")[0].as_py())
