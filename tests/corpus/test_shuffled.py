"""The training loader: corpus-wide mixing, deterministic positions, shares, cache, validation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.loader import open_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.shuffled import ShuffledBatches
from scfm.corpus.sources import H5ADSource
from scfm.data.io import read_counts

from .conftest import corpus_frame

N_DATASETS = 24
BATCH = 64


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A corpus of 24 data sets of 500 real PBMCs each (drawn with replacement from Kang's 1,975,
    renamed per data set), in shards of <= 100 cells: 120 row groups."""
    tmp = tmp_path_factory.mktemp("many")
    adata = read_counts(datasets.fetch("kang2018"))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, adata.n_obs, size=(N_DATASETS, 500))
    paths = []
    for k, rows in enumerate(picks):
        names = pd.Index([f"d{k:02d}-{i}" for i in range(rows.size)])
        part = ad.AnnData(X=adata.X[np.sort(rows)], obs=pd.DataFrame(index=names), var=adata.var)
        paths.append(tmp / f"set{k:02d}.h5ad")
        part.write_h5ad(paths[-1])
    out = tmp / "corpus"
    build_corpus(
        BuildConfig(
            output=str(out),
            sources=[H5ADSource(paths=[str(p) for p in paths], name="sets")],
            qc=QCConfig(min_genes=50),
            max_cells_per_shard=100,
            val_fraction=0.1,
            executor="local",
            mlflow=False,
            progress=False,
        )
    )
    return open_corpus(str(out))


@pytest.fixture(scope="module")
def frame(many):
    return corpus_frame(many.uri).set_index("cell_id")


def loader(corpus, tmp_path, **kw) -> ShuffledBatches:
    kw.setdefault("buffer_cells", 6000)
    return ShuffledBatches(corpus, BATCH, seed=7, cache_dir=tmp_path / "cache", with_ids=True, **kw)


def ids(batches) -> list[list[str]]:
    return [list(b.cell_id) for b in batches]


def composition_tv(batches, frame) -> np.ndarray:
    """Total-variation distance between each batch's data-set mix and the corpus's (train)."""
    train = frame[frame["split"] == "train"]
    labels = sorted(train["dataset_id"].unique())
    corpus = train["dataset_id"].value_counts().reindex(labels).to_numpy() / len(train)
    out = []
    for b in batches:
        mix = frame.loc[list(b.cell_id), "dataset_id"].value_counts().reindex(labels, fill_value=0)
        out.append(0.5 * np.abs(mix.to_numpy() / len(b.cell_id) - corpus).sum())
    return np.asarray(out)


def test_batches_mix_the_whole_corpus(many, frame, tmp_path):
    """The statistic: the mean, over the first 50 batches, of the total-variation distance
    between a batch's data-set composition and the corpus's. A uniform random shuffle of 64-cell
    batches over 24 equal data sets gives 0.24 (sampling noise alone); file order gives ~0.97.
    With a window of 6,000 cells (67 of the 120 row groups, as the default 65,536-cell window is
    64 row groups) the loader must stay below 0.32 on average (measured 0.29) and 0.45 at worst."""
    assert frame["dataset_id"].nunique() == N_DATASETS
    sb = loader(many, tmp_path)
    first = list(sb.epoch(0))[:50]
    assert len(first) == 50
    tv = composition_tv(first, frame)
    rng = np.random.default_rng(0)
    p = np.full(N_DATASETS, 1 / N_DATASETS)
    uniform = np.mean(
        [0.5 * np.abs(rng.multinomial(BATCH, p) / BATCH - p).sum() for _ in range(2000)]
    )
    assert 0.2 < uniform < 0.28
    assert tv.mean() < 0.32, (tv.mean(), uniform)
    assert tv.max() < 0.45
    # the previous reader (file order) fails the same statistic: the test can fail
    file_order = list(many.iter_batches(BATCH, split="train"))[:50]
    assert composition_tv(file_order, frame).mean() > 0.9


def test_cells_are_the_corpus_rows_and_an_epoch_is_a_permutation(many, frame, tmp_path):
    sb = loader(many, tmp_path)
    batches = list(sb.epoch(0))
    assert len(batches) == sb.batches_per_epoch == int((frame["split"] == "train").sum()) // BATCH
    seen = [c for b in batches for c in b.cell_id]
    assert len(set(seen)) == len(seen)  # no cell twice
    assert set(frame.loc[seen, "split"]) == {"train"}
    for b in batches[:3]:
        assert b.n_cells == BATCH and b.gene_idx.dtype == np.int32
        for i in (0, BATCH // 2, BATCH - 1):
            row = frame.loc[b.cell_id[i]]
            lo, hi = b.offsets[i], b.offsets[i + 1]
            assert np.array_equal(b.gene_idx[lo:hi], row["gene_idx"])
            assert np.array_equal(b.counts[lo:hi], row["counts"])
            assert b.total_counts[i] == row["total_counts"]
    again = list(sb.epoch(1))
    assert ids(again) != ids(batches)  # a new order every epoch
    assert sorted(c for b in again for c in b.cell_id) != [] and len(again) == len(batches)


def test_same_seed_epoch_and_position_give_the_same_cells(many, tmp_path):
    sb = loader(many, tmp_path)
    full = ids(sb.epoch(3))
    assert ids(loader(many, tmp_path).epoch(3)) == full  # a new process would build this anew
    assert ids(sb.epoch(3, skip=17)) == full[17:]  # resume at batch 17
    assert (
        ids(ShuffledBatches(many, BATCH, seed=8, cache_dir=tmp_path, with_ids=True).epoch(3))
        != full
    )


def test_workers_share_the_corpus_without_overlap(many, tmp_path):
    world = 3
    ranks = [loader(many, tmp_path, rank=r, world=world) for r in range(world)]
    assert len({r.batches_per_epoch for r in ranks}) == 1  # DDP ranks end epochs together
    per_rank = [ids(r.epoch(2)) for r in ranks]
    assert {len(b) for b in per_rank} == {ranks[0].batches_per_epoch}
    cells = [set(c for b in batches for c in b) for batches in per_rank]
    assert not (cells[0] & cells[1]) and not (cells[1] & cells[2]) and not (cells[0] & cells[2])
    # each rank's position is deterministic on its own: resume rank 1 at batch 5
    assert ids(loader(many, tmp_path, rank=1, world=world).epoch(2, skip=5)) == per_rank[1][5:]
    # every share holds row groups of many data sets (dealt from a corpus-wide permutation)
    shard_sets = {
        many.manifest.shard_paths()[i].split("/")[2] for i in ranks[0].index.shard[ranks[0].share]
    }
    assert len(shard_sets) >= N_DATASETS // 2


def test_cache_parquet_and_rebuilt_cache_give_identical_batches(many, tmp_path):
    cold = list(loader(many, tmp_path).epoch(0))
    cache_files = sorted((tmp_path / "cache").rglob("*.arrow"))
    assert cache_files  # written on first read
    warm = list(loader(many, tmp_path).epoch(0))
    direct = list(loader(many, tmp_path, cache=False).epoch(0))
    cache_files[0].write_bytes(b"not an arrow file")  # a damaged entry is rebuilt, not trusted
    repaired = list(loader(many, tmp_path).epoch(0))
    for other in (warm, direct, repaired):
        for a, b in zip(cold, other, strict=True):
            assert list(a.cell_id) == list(b.cell_id)
            assert np.array_equal(a.gene_idx, b.gene_idx) and np.array_equal(a.counts, b.counts)
            assert np.array_equal(a.offsets, b.offsets)
    assert cache_files[0].read_bytes()[:6] == b"ARROW1"


def test_validation_cells_are_split_over_ranks_in_equal_blocks(many, frame, tmp_path):
    val = [c for b in many.iter_batches(256, split="val") for c in b.cell_id]  # manifest order
    assert len(val) == int((frame["split"] == "val").sum()) > 51
    ranks = [loader(many, tmp_path, rank=r, world=2) for r in range(2)]
    every = [[c for b in r.val_batches() for c in b.cell_id] for r in ranks]
    half = len(val) // 2
    assert every == [val[:half], val[half : 2 * half]]
    capped = [[len(b.cell_id) for b in r.val_batches(max_cells=51)] for r in ranks]
    assert capped == [[25], [25]]  # same number of batches on every rank
    three = [
        [len(b.cell_id) for b in r.val_batches()]
        for r in [loader(many, tmp_path, rank=r, world=3) for r in range(3)]
    ]
    assert len({len(b) for b in three}) == 1 and len({sum(b) for b in three}) == 1


def test_max_train_cells_takes_the_first_cells_in_manifest_order(many, frame, tmp_path):
    sb = loader(many, tmp_path, max_train_cells=200)
    cells = [c for b in sb.epoch(0) for c in b.cell_id]
    assert len(cells) == 192  # 3 batches of 64
    first = [c for b in many.iter_batches(256, split="train") for c in b.cell_id][:200]
    assert set(cells) <= set(first)


def test_bad_arguments_are_refused(many, tmp_path):
    with pytest.raises(ValueError, match="rank 3 is not in"):
        ShuffledBatches(many, 8, rank=3, world=2, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        ShuffledBatches(many, 0, cache_dir=tmp_path)
