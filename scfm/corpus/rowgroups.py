"""Row groups of a corpus version: the unit of random access for training.

:class:`RowGroupIndex` lists every row group of a version with its training and validation cell
counts (read from the parquet footers and the dictionary-encoded ``split`` column; a
version's index is a few integers per 1,024 cells). :class:`RowGroupReader` returns one row
group's cells of one split as :class:`RowGroup` (CSR arrays), from a node-local
**training cache** when it can:

Decoding a parquet row group (zstd pages, list levels, delta and byte-stream-split values) costs
about 30 µs per cell on one core; an LZ4 Arrow IPC file about 8 µs; an uncompressed Arrow IPC
file, memory-mapped, about 2 µs (``benchmarks/loader_throughput.py``), for ~10 kB of disk per
cell at ~1,900 nonzeros (the parquet: ~2.6 kB). The first read of a row group decodes the parquet
and writes ``<cache>/<shard key>/g<group>.<split>.arrow`` (temporary name, then rename;
uncompressed unless ``compression="lz4"``); later epochs, and other workers on the node, map that
file. The page cache holds what fits in memory, the disk the rest. Shard files are immutable under
their name, so a cache entry is keyed by the shard's path and size and stays valid across corpus
versions that keep the shard. A cache file that cannot be read is deleted and rebuilt from the
parquet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scfm.data.packed import PackedCells
from scfm.runtime import user_cache_dir

if TYPE_CHECKING:
    from scfm.corpus.loader import Corpus

logger = logging.getLogger(__name__)

Split = Literal["train", "val"]
CELL_COLUMNS = ("gene_idx", "counts", "total_counts", "cell_id")
INDEX_FORMAT = 1


def default_cache_dir() -> Path:
    """``$SCFM_CACHE_DIR/corpus``, else ``$XDG_CACHE_HOME/scfm/corpus`` (``~/.cache``)."""
    return user_cache_dir("corpus")


@dataclass(frozen=True)
class RowGroup:
    """The cells of one row group and split, in file order (CSR; int16 genes as stored)."""

    gene_idx: np.ndarray  # (nnz,) int16 or int32
    counts: np.ndarray  # (nnz,) float32
    offsets: np.ndarray  # (n+1,) int32 or int64
    total_counts: np.ndarray  # (n,) float64
    cell_id: pa.Array | None = None

    @property
    def n_cells(self) -> int:
        return self.offsets.size - 1

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch) -> RowGroup:
        gi = _chunk(table.column("gene_idx"))
        ct = _chunk(table.column("counts"))
        offsets = gi.offsets.to_numpy()
        start, stop = int(offsets[0]), int(offsets[-1])
        ids = _chunk(table.column("cell_id")) if "cell_id" in table.column_names else None
        return cls(
            gene_idx=gi.values.slice(start, stop - start).to_numpy(zero_copy_only=False),
            counts=ct.values.slice(start, stop - start).to_numpy(zero_copy_only=False),
            offsets=offsets - start,
            total_counts=_chunk(table.column("total_counts")).to_numpy(zero_copy_only=False),
            cell_id=ids,
        )


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array (zero-copy when the column has one chunk, as cache files and row groups do)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def gather(parts: list[tuple[RowGroup, np.ndarray]]) -> PackedCells:
    """Packed cells made of ``rows`` of each row group, in the order given.

    Each cell is one contiguous slice of its row group's arrays; one concatenation per array
    copies them in the stored dtype (measured 4× faster than a fancy-index gather of the same
    entries); the gene indices are widened to int32 once, afterwards (casting inside the
    concatenation costs a cast setup per cell, ~3× the whole gather).
    """
    genes: list[np.ndarray] = []
    values: list[np.ndarray] = []
    lengths, totals, ids = [], [], []
    for group, rows in parts:
        if rows.size == 0:
            continue
        starts, ends = group.offsets[rows], group.offsets[rows + 1]
        gi, ct = group.gene_idx, group.counts
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            genes.append(gi[a:b])
            values.append(ct[a:b])
        lengths.append(ends - starts)
        totals.append(group.total_counts[rows])
        if group.cell_id is not None:
            ids.append(group.cell_id.take(pa.array(rows)).to_numpy(zero_copy_only=False))
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(lens.size + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return PackedCells(
        gene_idx=np.concatenate(genes).astype(np.int32) if genes else np.zeros(0, np.int32),
        counts=np.concatenate(values).astype(np.float32, copy=False)
        if values
        else np.zeros(0, np.float32),
        offsets=offsets,
        total_counts=np.concatenate(totals) if totals else np.zeros(0),
        cell_id=np.concatenate(ids) if ids and len(ids) == len(lengths) else None,
    )


@dataclass(frozen=True)
class RowGroupIndex:
    """Every row group of a corpus version, in manifest order, with its split counts."""

    paths: tuple[str, ...]  # shard paths relative to the corpus root
    shard: np.ndarray  # (G,) int32: index into paths
    group: np.ndarray  # (G,) int32: row group within the shard
    n_train: np.ndarray  # (G,) int64
    n_val: np.ndarray  # (G,) int64

    @property
    def n_groups(self) -> int:
        return int(self.shard.size)

    def n_cells(self, split: Split) -> int:
        return int((self.n_train if split == "train" else self.n_val).sum())

    def counts(self, split: Split) -> np.ndarray:
        return self.n_train if split == "train" else self.n_val

    def limit_train(self, max_cells: int | None) -> RowGroupIndex:
        """The first ``max_cells`` training cells in manifest order (the rest: none)."""
        if max_cells is None or max_cells >= self.n_cells("train"):
            return self
        before = np.concatenate([[0], np.cumsum(self.n_train)[:-1]])
        n_train = np.clip(max_cells - before, 0, self.n_train)
        return RowGroupIndex(self.paths, self.shard, self.group, n_train, self.n_val)


class RowGroupReader:
    """Reads ``(row group, split)`` cells of a corpus version, through the training cache.

    Parameters
    ----------
    corpus
        The corpus version.
    cache_dir
        Node-local cache directory (:func:`default_cache_dir` when None); ``cache=False`` reads
        the parquet every time.
    with_ids
        Also return cell ids (``PackedCells.cell_id``); training does not need them.
    compression
        Of new cache files: None (memory-mapped, fastest) or ``"lz4"`` (about half the disk,
        4× the read cost). Existing files are read whatever their compression.
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        with_ids: bool = False,
        compression: Literal["lz4"] | None = None,
    ) -> None:
        if compression not in (None, "lz4"):
            raise ValueError(f"cache compression must be None or 'lz4', got {compression!r}")
        self.corpus = corpus
        self.compression = compression
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.cache = cache
        self.with_ids = with_ids
        self._keys: dict[str, str] = {}

    # ---- index -------------------------------------------------------------------------------
    def index(self, threads: int = 8) -> RowGroupIndex:
        """The version's :class:`RowGroupIndex` (per-shard entries cached beside the cells)."""
        paths = tuple(self.corpus.manifest.shard_paths())
        with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
            per_shard = list(pool.map(self._shard_index, paths))
        lens = [len(t) for t, _ in per_shard]
        return RowGroupIndex(
            paths=paths,
            shard=np.repeat(np.arange(len(paths), dtype=np.int32), lens),
            group=np.concatenate([np.arange(n, dtype=np.int32) for n in lens] or [[]]).astype(
                np.int32
            ),
            n_train=np.concatenate([t for t, _ in per_shard] or [[]]).astype(np.int64),
            n_val=np.concatenate([v for _, v in per_shard] or [[]]).astype(np.int64),
        )

    def _shard_index(self, rel: str) -> tuple[np.ndarray, np.ndarray]:
        cached = self._entry(rel) / "index.json" if self.cache else None
        if cached is not None and cached.is_file():
            try:
                d = json.loads(cached.read_text())
                if d.get("format") == INDEX_FORMAT:
                    return np.asarray(d["train"], np.int64), np.asarray(d["val"], np.int64)
            except (OSError, ValueError, KeyError):
                pass
        with self.corpus.fs.open_input_file(self._full(rel)) as f:
            pf = pq.ParquetFile(f, read_dictionary=["split"])
            train, val = [], []
            for g in range(pf.num_row_groups):
                by = _split_counts(pf.read_row_group(g, columns=["split"]).column(0))
                train.append(int(by.get("train", 0)))
                val.append(int(by.get("val", 0)))
        if cached is not None:
            _atomic_write(
                cached, json.dumps({"format": INDEX_FORMAT, "train": train, "val": val}).encode()
            )
        return np.asarray(train, np.int64), np.asarray(val, np.int64)

    # ---- cells -------------------------------------------------------------------------------
    def read(self, rel: str, group: int, split: Split) -> RowGroup:
        """The cells of ``split`` in row group ``group`` of shard ``rel``, in file order."""
        if not self.cache:
            return self._from_parquet(rel, group, write=False)[split]
        path = self._entry(rel) / f"g{group:05d}.{split}.arrow"
        if path.is_file():
            try:
                return RowGroup.from_arrow(_read_ipc(path, self.with_ids))
            except (OSError, pa.ArrowException) as e:
                logger.warning("training cache file %s unreadable (%s); rebuilding it", path, e)
                path.unlink(missing_ok=True)
        return self._from_parquet(rel, group, write=True)[split]

    def _from_parquet(self, rel: str, group: int, write: bool) -> dict[str, RowGroup]:
        with self.corpus.fs.open_input_file(self._full(rel)) as f:
            table = pq.ParquetFile(f).read_row_group(
                group, columns=[*CELL_COLUMNS, "split"], use_threads=False
            )
        out = {}
        for split in ("train", "val"):
            part = table.filter(pc.equal(table.column("split"), split)).select(list(CELL_COLUMNS))
            if write:
                _write_ipc(self._entry(rel) / f"g{group:05d}.{split}.arrow", part, self.compression)
            if not self.with_ids:
                part = part.drop_columns(["cell_id"])
            out[split] = RowGroup.from_arrow(part)
        return out

    def _full(self, rel: str) -> str:
        from scfm.corpus.shards import join

        return join(self.corpus.root, rel)

    def _entry(self, rel: str) -> Path:
        key = self._keys.get(rel)
        if key is None:
            size = self.corpus.fs.get_file_info(self._full(rel)).size
            raw = f"{self.corpus.uri}|{rel}|{size}".encode()
            key = self._keys[rel] = hashlib.sha1(raw).hexdigest()[:20]
        return self.cache_dir / key


def _split_counts(column: pa.ChunkedArray) -> dict[str, int]:
    split = column.combine_chunks()
    if pa.types.is_dictionary(split.type):
        n = np.bincount(
            split.indices.to_numpy(zero_copy_only=False), minlength=len(split.dictionary)
        )
        return dict(zip(split.dictionary.to_pylist(), n.tolist(), strict=True))
    return {v["values"]: v["counts"] for v in pc.value_counts(split).to_pylist()}


def _read_ipc(path: Path, with_ids: bool) -> pa.Table:
    """The file's table; uncompressed buffers stay memory-mapped (unmapped when released)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return table if with_ids else table.drop_columns(["cell_id"])


def _write_ipc(path: Path, table: pa.Table, compression: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with (
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, table.schema, options=options) as w,
    ):
        w.write_table(table)
    os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
