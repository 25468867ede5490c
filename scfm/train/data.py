"""How training reads the corpus: Ray Data splits and arrow → packed batches.

The corpus is parquet with one row per cell (``gene_idx`` / ``counts`` list columns,
``total_counts``, ``split``; see docs/corpus.md). Training never densifies to 19,264 columns on
the host: a batch stays packed (flat ``gene_idx`` / ``counts`` + row ``offsets``) until the RDA
collate builds the model's tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import ray.data

TRAIN_COLUMNS = ["cell_id", "gene_idx", "counts", "total_counts", "split"]


def packed_batch_from_arrow(table: pa.Table) -> dict[str, np.ndarray]:
    """Packed loader batch (``gene_idx``, ``counts``, ``offsets``, ``total_counts``) of a table."""
    gene_lists = table.column("gene_idx").combine_chunks()
    count_lists = table.column("counts").combine_chunks()
    lengths = pc.list_value_length(gene_lists).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {
        "gene_idx": pc.list_flatten(gene_lists).to_numpy().astype(np.int32, copy=False),
        "counts": pc.list_flatten(count_lists).to_numpy().astype(np.float32, copy=False),
        "offsets": offsets,
        "total_counts": table.column("total_counts").to_numpy().astype(np.float64, copy=False),
    }


def corpus_files(corpus: str) -> list[str]:
    """Shard files of a corpus: those its ``manifest.json`` lists, else every ``*.parquet``."""
    root = Path(corpus)
    manifest = root / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        shards = data.get("shards", [])
        files = [str(root / (s["path"] if isinstance(s, dict) else s)) for s in shards]
        if files:
            return files
    files = sorted(str(p) for p in root.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no corpus shards under {corpus}: build one with `scfm corpus build` first"
        )
    return files


def corpus_splits(
    corpus: str, *, max_train_cells: int | None = None, val_cells: int | None = None
) -> dict[str, ray.data.Dataset]:
    """Lazy Ray datasets ``{"train", "val"}`` over the corpus shards (streamed, never loaded)."""
    import ray.data
    from ray.data.expressions import col

    ds = ray.data.read_parquet(corpus_files(corpus)).select_columns(TRAIN_COLUMNS)
    train = ds.filter(expr=col("split") == "train")
    val = ds.filter(expr=col("split") == "val")
    if max_train_cells:
        train = train.limit(max_train_cells)
    if val_cells:
        val = val.limit(val_cells)
    return {"train": train, "val": val}
