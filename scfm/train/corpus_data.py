"""How training reads the corpus: Ray Data splits of a committed corpus version.

Batches stay packed (flat ``gene_idx`` / ``counts`` + row ``offsets``, see
:func:`scfm.corpus.loader.pack`) until the RDA collate builds the model's tensors: nothing is
densified to 19,264 columns on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scfm.corpus.loader import MODEL_COLUMNS, Corpus, open_corpus

if TYPE_CHECKING:
    import ray.data


def corpus_splits(
    corpus: str | Corpus, *, max_train_cells: int | None = None, val_cells: int | None = None
) -> dict[str, ray.data.Dataset]:
    """Lazy Ray datasets ``{"train", "val"}`` over the newest corpus version (streamed)."""
    c = open_corpus(corpus) if isinstance(corpus, str) else corpus
    train = c.ray_dataset(split="train", columns=MODEL_COLUMNS)
    val = c.ray_dataset(split="val", columns=MODEL_COLUMNS)
    if max_train_cells:
        train = train.limit(max_train_cells)
    if val_cells:
        val = val.limit(val_cells)
    return {"train": train, "val": val}
