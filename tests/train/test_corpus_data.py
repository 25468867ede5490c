from __future__ import annotations

from scfm.corpus.loader import open_corpus
from scfm.train.corpus_data import corpus_splits


def test_splits_cover_the_corpus_once(ray_local, kang_corpus):
    corpus = open_corpus(kang_corpus)
    splits = corpus_splits(corpus)
    ids = {
        name: {r["cell_id"] for r in ds.select_columns(["cell_id"]).take_all()}
        for name, ds in splits.items()
    }
    assert len(ids["train"]) == corpus.n_cells_split("train") > 1000
    assert len(ids["val"]) == corpus.n_cells_split("val") > 100
    assert not ids["train"] & ids["val"]
    assert len(ids["train"]) + len(ids["val"]) == corpus.n_cells
    capped = corpus_splits(corpus, max_train_cells=50, val_cells=10)
    assert capped["train"].count() == 50 and capped["val"].count() == 10
