"""Read a corpus version and yield packed cells (:class:`~scfm.data.packed.PackedCells`).

Batches are built straight from the Arrow list columns' values and offsets (no per-cell Python
loop, never a dense cells × 19,264 matrix).

Two readers: :meth:`Corpus.iter_batches` (plain pyarrow, one process, streams row groups) and
:meth:`Corpus.ray_dataset` (``ray.data.read_parquet`` over the manifest's shards, for Ray Train;
turn its pyarrow batches into packed cells with ``PackedCells.from_arrow`` or
:func:`iter_ray_batches`). Both read only the shards listed in the chosen manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scfm.corpus import manifest as mf
from scfm.corpus.manifest import Manifest
from scfm.corpus.shards import join, resolve
from scfm.data.packed import PackedCells

Split = Literal["train", "val"]
MODEL_COLUMNS = ("cell_id", "gene_idx", "counts", "total_counts")


def iter_ray_batches(ds: Any, batch_size: int, **kwargs: Any) -> Iterator[PackedCells]:
    """Packed cells from a Ray Dataset of corpus rows (``ds.iter_batches`` in pyarrow)."""
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow", **kwargs):
        yield PackedCells.from_arrow(batch)


@dataclass
class Corpus:
    """One committed corpus version: its manifest and where its shards are."""

    uri: str
    fs: pafs.FileSystem
    root: str
    manifest: Manifest

    @property
    def version(self) -> int:
        return int(self.manifest.corpus_version)

    @property
    def shard_paths(self) -> list[str]:
        """Full paths (on :attr:`fs`) of the shards of this version."""
        return [join(self.root, p) for p in self.manifest.shard_paths()]

    @property
    def n_cells(self) -> int:
        return self.manifest.n_cells

    def n_cells_split(self, split: Split) -> int:
        return int(self.manifest.totals[f"n_cells_{split}"])

    def iter_tables(
        self,
        *,
        split: Split | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int = 4096,
    ) -> Iterator[pa.Table]:
        """Stream the corpus as Arrow tables of ``batch_size`` rows (last may be shorter)."""
        cols = list(columns) if columns is not None else None
        if cols is not None and split is not None and "split" not in cols:
            cols.append("split")
        pending: list[pa.Table] = []
        n_pending = 0
        for path in self.shard_paths:
            with self.fs.open_input_file(path) as f:
                for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=cols):
                    t = pa.Table.from_batches([rb])
                    if split is not None:
                        t = t.filter(pc.equal(t.column("split"), split))
                    if t.num_rows == 0:
                        continue
                    pending.append(t)
                    n_pending += t.num_rows
                    while n_pending >= batch_size:
                        whole = pa.concat_tables(pending)
                        yield whole.slice(0, batch_size)
                        rest = whole.slice(batch_size)
                        pending, n_pending = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        if n_pending:
            yield pa.concat_tables(pending)

    def iter_batches(
        self, batch_size: int = 256, *, split: Split | None = None
    ) -> Iterator[PackedCells]:
        """Packed cells in shard order (single process, plain pyarrow)."""
        for t in self.iter_tables(split=split, columns=MODEL_COLUMNS, batch_size=batch_size):
            yield PackedCells.from_arrow(t)

    def read_table(self, *, split: Split | None = None, columns: Sequence[str] | None = None):
        """The whole version as one Arrow table (small corpora, tests)."""
        tables = list(self.iter_tables(split=split, columns=columns, batch_size=1 << 16))
        if not tables:
            from scfm.corpus.harmonize import SCHEMA

            schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def ray_dataset(self, *, split: Split | None = None, columns: Sequence[str] | None = None):
        """A Ray Dataset over this version's shards (``ray.data.read_parquet``)."""
        import ray.data
        from ray.data.expressions import col

        ds = ray.data.read_parquet(self.shard_paths, filesystem=self.fs)
        if split is not None:
            ds = ds.filter(expr=col("split") == split)
        if columns is not None:
            ds = ds.select_columns(list(columns))
        return ds


def open_corpus(uri: str, version: int | None = None) -> Corpus:
    """Open the newest committed version of a corpus (or ``version``)."""
    fs, root = resolve(uri)
    manifest = mf.load_manifest(fs, root, version)
    if manifest is None:
        raise FileNotFoundError(f"no committed corpus version under {uri}")
    return Corpus(uri, fs, root, manifest)
