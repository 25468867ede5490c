"""Corpus sources: each lists its data sets (with versions), plans work units, reads one unit.

A *data set* is the unit of versioning (a Census ``dataset_id`` with its ``dataset_version_id``, a
file with its sha256); a *work unit* is a block of at most ``block_cells`` cells of one data set,
the unit of parallel work: no worker ever holds more than one block.

Sources are small picklable dataclasses (they travel to Ray workers); open handles are cached per
process and never pickled.

=================  ==========================================================================
``CensusSource``   ``cellxgene_census.open_soma(census_version=...)`` or ``(uri=...)``; cells of
                   ``organism`` with ``is_primary_data == True`` and ``obs_value_filter``; reads
                   ``X['raw']`` by ``soma_joinid`` blocks; genes are Census ``feature_id``.
``H5ADSource``     ``.h5ad`` files, read backed (``X`` stays on disk) block by block.
``TenXSource``     10x Cell Ranger MEX directories and ``.h5`` files.
``DirectorySource``  every ``.h5ad`` / 10x ``.h5`` / MEX directory under a folder, re-listed at
                   each build, so a refresh sees added and removed files.
=================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.corpus.harmonize import METADATA_COLUMNS, CellBlock

logger = logging.getLogger(__name__)

FileFormat = Literal["h5ad", "10x_mtx", "10x_h5"]


class StoreChangedError(RuntimeError):
    """The source changed between planning and reading (an infrastructure failure: retried)."""


# Failures of the machinery, not of the input: retried with backoff inside the job, then reported
# as failed for this run only (never carried forward as a verdict on the data set).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    MemoryError,
    TimeoutError,
    ConnectionError,
    StoreChangedError,
)


@dataclass(frozen=True)
class DatasetRef:
    """One data set of a source, as listed now.

    Attributes
    ----------
    source, dataset_id
        Identity; ``cell_id`` is ``{source}:{dataset_id}:{obs_id}``.
    version
        Changes whenever the content changes (Census ``dataset_version_id``, file sha256).
    n_cells
        Cells selected for the corpus (after source-level filters); None when unknown.
    error
        Set when the data set cannot even be listed/opened: it is quarantined.
    info
        Extra description for the manifest (title, path, format).
    """

    source: str
    dataset_id: str
    version: str
    n_cells: int | None = None
    error: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class WorkUnit:
    """A block of cells of one data set: ``[start, stop)`` rows (files) or joinids (Census)."""

    source: str
    dataset_id: str
    version: str
    block: int
    n_blocks: int
    start: int
    stop: int
    n_cells: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorkUnit:
        return cls(**d)


class Source:
    """Interface of a corpus source (see the module docstring)."""

    name: str
    kind: ClassVar[str] = "source"

    def spec(self) -> dict:
        """What defines the cells this source yields (not its version): part of the fingerprint."""
        raise NotImplementedError

    def release(self) -> dict:
        """Version information of the source as a whole (e.g. the Census release)."""
        return {}

    def to_config(self) -> dict:
        """Constructor arguments plus ``kind``: :func:`source_from_config` rebuilds the source."""
        out: dict = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = [str(v) for v in value] if f.name == "paths" else value
        return out

    def datasets(self) -> list[DatasetRef]:
        raise NotImplementedError

    def plan(self, ref: DatasetRef, block_cells: int) -> list[WorkUnit]:
        """Split a data set into blocks of at most ``block_cells`` cells."""
        n = int(ref.n_cells or 0)
        starts = list(range(0, n, block_cells))
        return [
            WorkUnit(
                ref.source,
                ref.dataset_id,
                ref.version,
                i,
                len(starts),
                s,
                min(s + block_cells, n),
                min(s + block_cells, n) - s,
            )
            for i, s in enumerate(starts)
        ]

    def read(self, unit: WorkUnit) -> CellBlock:
        raise NotImplementedError

    def pinned(self) -> Source:
        """This source with moving references (release aliases) resolved, once, on the driver."""
        return self

    def is_transient(self, exc: BaseException, stage: str) -> bool:
        """Whether ``exc`` (raised at ``stage``) is an infrastructure failure, not a data verdict.

        Transient: :data:`TRANSIENT_ERRORS`, and any ``OSError`` while writing the output.
        Everything else (bad counts, unmapped genes, a corrupt block) is a verdict on the input.
        """
        return isinstance(exc, TRANSIENT_ERRORS) or (stage == "write" and isinstance(exc, OSError))


# --------------------------------------------------------------------------------------- Census

_CENSUS_HANDLES: dict[tuple, Any] = {}


_SCAN_ROWS = 262_144  # obs rows per planning read: bounds the driver's memory (benchmark)


@dataclass
class CensusSource(Source):
    """Cells of CELLxGENE Census (a pinned release) or of a Census-shaped SOMA store.

    Parameters
    ----------
    census_version
        Census release to pin (e.g. ``"2025-01-30"``); recorded in the manifest.
    uri
        Open this store instead (local path or cloud URI); takes precedence over the version.
    organism
        ``"Homo sapiens"`` (the vocabulary is human).
    obs_value_filter
        Extra SOMA value filter, e.g. ``"tissue_general == 'blood'"``.
    primary_only
        Keep ``is_primary_data == True`` only (Census lists duplicated cells several times).
    name
        Source name, the first part of every ``cell_id``.
    """

    census_version: str | None = None
    uri: str | None = None
    organism: str = "Homo sapiens"
    obs_value_filter: str | None = None
    primary_only: bool = True
    name: str = "census"
    kind: ClassVar[str] = "census"

    def __post_init__(self) -> None:
        if self.census_version is None and self.uri is None:
            raise ValueError("CensusSource needs census_version=... (a pinned release) or uri=...")
        self._requested: dict | None = None  # set by pinned(): the config as the user gave it

    def pinned(self) -> CensusSource:
        """The concrete release behind an alias (``stable``, ``latest``), resolved once.

        Returns a copy that opens that release's store by URI, so workers never look the alias
        up again (it may move during a build) and need no access to the release directory. The
        manifest records the concrete release; the source's config keeps the alias, so the next
        refresh follows it.
        """
        if self.uri is not None or self.census_version is None:
            return self
        import dataclasses

        import cellxgene_census

        desc = cellxgene_census.get_census_version_description(self.census_version)  # one lookup
        uri = desc.get("soma", {}).get("uri")
        if not uri:
            raise ValueError(
                f"Census release {self.census_version!r} has no SOMA uri in the release directory;"
                " pass the store with uri=... (--census-uri)"
            )
        out = dataclasses.replace(
            self, census_version=desc.get("release_build") or self.census_version, uri=uri
        )
        out._requested = self.to_config()
        if out.census_version != self.census_version:
            logger.info("Census %r is release %s", self.census_version, out.census_version)
        return out

    def to_config(self) -> dict:
        requested = getattr(self, "_requested", None)
        return dict(requested) if requested else super().to_config()

    def is_transient(self, exc: BaseException, stage: str) -> bool:
        """Census reads that fail after planning (network, object store) are infrastructure."""
        if super().is_transient(exc, stage):
            return True
        if stage != "read":
            return False
        import tiledbsoma

        return isinstance(exc, (OSError, tiledbsoma.SOMAError))

    @property
    def _experiment_key(self) -> str:
        return self.organism.lower().replace(" ", "_")

    @property
    def value_filter(self) -> str | None:
        parts = ["is_primary_data == True"] if self.primary_only else []
        if self.obs_value_filter:
            parts.append(f"({self.obs_value_filter})")
        return " and ".join(parts) or None

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "organism": self.organism,
            "obs_value_filter": self.obs_value_filter,
            "primary_only": self.primary_only,
        }

    def _open(self):
        key = (self.census_version, self.uri, os.getpid())
        census = _CENSUS_HANDLES.get(key)
        if census is None:
            import cellxgene_census

            if self.uri is not None:
                census = cellxgene_census.open_soma(uri=self.uri)
            else:
                census = cellxgene_census.open_soma(census_version=self.census_version)
            _CENSUS_HANDLES[key] = census
        return census

    def _experiment(self):
        return self._open()["census_data"][self._experiment_key]

    def release(self) -> dict:
        summary = self._open()["census_info"]["summary"].read().concat().to_pandas()
        values = dict(zip(summary["label"], summary["value"], strict=True))
        return {
            "census_version": self.census_version,
            "uri": self.uri,
            "census_build_date": values.get("census_build_date"),
            "census_schema_version": values.get("census_schema_version"),
        }

    def _scan_obs(self, block_cells: int | None) -> tuple[dict[str, int], dict[str, list]]:
        """One streaming pass over the selected cells' obs: counts, and block bounds.

        Reads ``soma_joinid`` and ``dataset_id`` in slices of ``_SCAN_ROWS`` joinids, in order,
        and keeps only a count per data set and, with ``block_cells``, one ``(first joinid, last
        joinid, n)`` per block: driver memory grows with the number of blocks, not of cells
        (at 50M cells: ~2,500 blocks of 20,000), plus one slice.
        """
        counts: dict[str, int] = {}
        blocks: dict[str, list] = {}
        current: dict[str, list] = {}  # data set -> [first, last, n] of its open block
        obs = self._experiment().obs
        (lo, hi), *_ = obs.non_empty_domain()  # soma_joinid range
        for start in range(int(lo), int(hi) + 1, _SCAN_ROWS):
            # a bounded slice of joinids per read (SOMA slices include both ends), in order
            table = obs.read(
                (slice(start, min(start + _SCAN_ROWS, int(hi) + 1) - 1),),
                column_names=["soma_joinid", "dataset_id"],
                value_filter=self.value_filter,
                result_order="row-major",
            ).concat()
            if table.num_rows == 0:
                continue
            joinids = table.column("soma_joinid").to_numpy()
            encoded = table.column("dataset_id").combine_chunks().dictionary_encode()
            codes = encoded.indices.to_numpy()
            names = encoded.dictionary.to_pylist()
            for k, ds in enumerate(names):
                ids = joinids[codes == k] if len(names) > 1 else joinids
                counts[ds] = counts.get(ds, 0) + len(ids)
                if block_cells is None:
                    continue
                i, cur = 0, current.get(ds)
                while i < len(ids):
                    if cur is None:
                        cur = [int(ids[i]), int(ids[i]), 0]
                    take = min(block_cells - cur[2], len(ids) - i)
                    cur[1], cur[2] = int(ids[i + take - 1]), cur[2] + take
                    i += take
                    if cur[2] == block_cells:
                        blocks.setdefault(ds, []).append(tuple(cur))
                        cur = None
                current[ds] = cur
        for ds, cur in current.items():
            if cur is not None:
                blocks.setdefault(ds, []).append(tuple(cur))
        return counts, blocks

    def datasets(self) -> list[DatasetRef]:
        census = self._open()
        table = census["census_info"]["datasets"].read().concat().to_pandas()
        n_by_ds, _ = self._scan_obs(None)
        refs = []
        for row in table.itertuples():
            n = int(n_by_ds.get(row.dataset_id, 0))
            if n == 0 and self.value_filter and int(row.dataset_total_cell_count) > 0:
                continue  # nothing selected by the filter: not part of this corpus
            refs.append(
                DatasetRef(
                    self.name,
                    row.dataset_id,
                    row.dataset_version_id,
                    n,
                    info={"title": row.dataset_title, "collection": row.collection_name},
                )
            )
        return refs

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_blocks", None)
        return state

    def plan(self, ref: DatasetRef, block_cells: int) -> list[WorkUnit]:
        cached = getattr(self, "_blocks", None)
        if cached is None or cached[0] != block_cells:
            # one pass for every data set, cached per block size (driver only, not pickled)
            cached = (block_cells, self._scan_obs(block_cells)[1])
            self._blocks = cached
        bounds = cached[1].get(ref.dataset_id, [])
        # [start, stop) in joinid space; the selected cells in it are exactly the block's n
        return [
            WorkUnit(self.name, ref.dataset_id, ref.version, i, len(bounds), lo, hi + 1, n)
            for i, (lo, hi, n) in enumerate(bounds)
        ]

    def read(self, unit: WorkUnit) -> CellBlock:
        exp = self._experiment()
        lo, hi = unit.start, unit.stop - 1  # SOMA slices include both ends
        flt = f"dataset_id == '{unit.dataset_id}'"
        if self.value_filter:
            flt = f"{flt} and {self.value_filter}"
        present = set(exp.obs.schema.names)  # Census has them all; smaller stores may not
        cols = [c for c in ("soma_joinid", "observation_joinid", *METADATA_COLUMNS) if c in present]
        obs = exp.obs.read(coords=(slice(lo, hi),), value_filter=flt, column_names=cols)
        obs = obs.concat().to_pandas().sort_values("soma_joinid")
        joinids = obs["soma_joinid"].to_numpy()
        if len(joinids) != unit.n_cells:
            raise StoreChangedError(
                f"{unit.dataset_id} block {unit.block}: expected {unit.n_cells} cells, the store "
                f"returned {len(joinids)} (did the store change during the build?)"
            )
        var_ids = _census_var(self, exp)
        X = _read_soma_block(exp.ms["RNA"].X["raw"], lo, hi, joinids, len(var_ids))
        return CellBlock(
            X=X,
            gene_ids=var_ids,
            obs_ids=obs["observation_joinid"].to_numpy(dtype=str),
            obs=obs.reset_index(drop=True),
        )


_VAR_CACHE: dict[tuple, np.ndarray] = {}
# Stored values read from SOMA X by this process (tests and benchmarks check what a block costs).
SOMA_VALUES_READ = [0]


def _census_var(src: CensusSource, exp) -> np.ndarray:
    key = (src.census_version, src.uri, src.organism)
    if key not in _VAR_CACHE:
        var = exp.ms["RNA"].var.read(column_names=["soma_joinid", "feature_id"]).concat()
        var = var.to_pandas().sort_values("soma_joinid")
        if not np.array_equal(var["soma_joinid"].to_numpy(), np.arange(len(var))):
            raise RuntimeError("var soma_joinid is not 0..n-1; cannot index X columns")
        _VAR_CACHE[key] = var["feature_id"].to_numpy(dtype=str)
    return _VAR_CACHE[key]


def _read_soma_block(X, lo: int, hi: int, joinids: np.ndarray, n_var: int) -> sp.csr_matrix:
    """Rows ``joinids`` (sorted, within [lo, hi]) of a SOMA sparse matrix, as CSR.

    Reads in the array's native order (``result_order="row-major"`` measured ~20× slower at
    2,000 nonzeros per cell) and buckets entries by row with scipy's COO → CSR (linear). When a
    value filter selected only some rows of the range, only those rows are read (point
    coordinates), so memory stays bounded by the selected cells, however sparse the selection.
    """
    dense_range = len(joinids) == hi - lo + 1
    coords = slice(lo, hi) if dense_range else np.asarray(joinids, dtype=np.int64)
    tables = X.read((coords,)).tables()
    dims0, dims1, data = [], [], []
    for t in tables:
        dims0.append(t.column("soma_dim_0").to_numpy())
        dims1.append(t.column("soma_dim_1").to_numpy())
        data.append(t.column("soma_data").to_numpy())
    d0 = np.concatenate(dims0) if dims0 else np.zeros(0, np.int64)
    d1 = np.concatenate(dims1) if dims1 else np.zeros(0, np.int64)
    v = np.concatenate(data) if data else np.zeros(0, np.float32)
    SOMA_VALUES_READ[0] += len(v)
    if len(joinids) == hi - lo + 1:  # every row in the range is selected (the common case)
        row = d0 - lo
    else:
        row = np.searchsorted(joinids, d0)
        keep = joinids[np.minimum(row, len(joinids) - 1)] == d0  # drop filtered-out cells
        row, d1, v = row[keep], d1[keep], v[keep]
    out = sp.csr_matrix((v.astype(np.float32, copy=False), (row, d1)), shape=(len(joinids), n_var))
    out.sort_indices()
    return out


# ---------------------------------------------------------------------------------------- files


def file_sha256(path: str | Path, chunk: int = 8 << 20) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def _detect(path: Path) -> FileFormat | None:
    from scfm.data.io import detect_format

    try:
        return detect_format(path)
    except (ValueError, FileNotFoundError):
        return None


_FILE_CACHE: dict[tuple, Any] = {}


@dataclass
class FileSource(Source):
    """Count files (h5ad, 10x MEX directory, 10x HDF5), one data set per file.

    Parameters
    ----------
    paths
        Files or 10x directories. ``dataset_id`` is the file name (unique within the source).
    name
        Source name (first part of ``cell_id``).
    layer
        h5ad layer with raw counts (``"raw"`` = ``.raw.X``); default ``X``. Read block by block
        like ``X``.
    backed
        Kept for compatibility: h5ad matrices are always read from disk block by block.
    obs_columns
        Metadata renames ``{corpus column: source column}``, e.g. ``{"cell_type": "bulk_labels"}``.
        Columns already named as in :data:`~scfm.corpus.harmonize.METADATA_COLUMNS` are kept.
    genome
        For multi-genome 10x HDF5 files.
    """

    paths: Sequence[str] = ()
    name: str = "files"
    layer: str | None = None
    backed: bool = True
    obs_columns: dict[str, str] = field(default_factory=dict)
    genome: str | None = None
    formats: ClassVar[tuple[FileFormat, ...]] = ("h5ad", "10x_mtx", "10x_h5")
    kind: ClassVar[str] = "files"

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "layer": self.layer,
            "obs_columns": dict(sorted(self.obs_columns.items())),
            "genome": self.genome,
        }

    def _paths(self) -> list[Path]:
        return [Path(p) for p in self.paths]

    def datasets(self) -> list[DatasetRef]:
        paths = self._paths()
        ids = [self._dataset_id(p) for p in paths]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: file names must be unique (they are dataset ids)")
        refs = []
        for p, ds_id in zip(paths, ids, strict=True):
            info = {"path": str(p)}
            try:
                version = file_sha256(p)
            except OSError as exc:
                refs.append(DatasetRef(self.name, ds_id, "", None, f"unreadable: {exc}", info))
                continue
            fmt = _detect(p)
            if fmt is None or fmt not in self.formats:
                err = f"not a supported input ({', '.join(self.formats)}): {p}"
                refs.append(DatasetRef(self.name, ds_id, version, None, err, info))
                continue
            info["format"] = fmt
            try:
                n_cells, obs_ids = self._open_names(p)
                from scfm.data.validate import check_names

                check_names(obs_ids, "cell")
            except Exception as exc:  # noqa: BLE001 - any open failure quarantines the file
                err = f"{type(exc).__name__}: {exc}"
                refs.append(DatasetRef(self.name, ds_id, version, None, err, info))
                continue
            refs.append(DatasetRef(self.name, ds_id, version, n_cells, None, info))
        return refs

    def _open_names(self, path: Path) -> tuple[int, np.ndarray]:
        handle = self._handle(path)
        return len(handle.obs), handle.obs.index.to_numpy(dtype=str)

    def _handle(self, path: Path) -> _FileHandle:
        """Names, metadata and a row-block reader of one input (one open input per process).

        h5ad (``X``, ``raw`` or a layer), 10x ``.h5`` and MEX blocks are read from disk block by
        block (:mod:`scfm.corpus.blockread`).
        """
        from scfm.corpus import blockread
        from scfm.data.io import read_counts, tenx_h5_meta, tenx_mtx_meta

        key = (str(path), os.path.getmtime(path), self.layer, self.genome, os.getpid())
        handle = _FILE_CACHE.get(key)
        if handle is not None:
            return handle
        fmt = _detect(path)
        if fmt == "h5ad":
            adata = read_counts(path, backed=True)  # obs and var in memory, matrices on disk
            genes = adata.var_names
            if self.layer == "raw":
                if adata.raw is None:
                    raise ValueError(f"{path} has no .raw (layer='raw'); layers: "
                                     f"{list(adata.layers)}")  # fmt: skip
                genes = adata.raw.var_names
            elif self.layer is not None and self.layer not in adata.layers:
                raise ValueError(
                    f"{path} has no layer {self.layer!r}; layers are: "
                    f"{list(adata.layers) or 'none'} (use layer=None for X or 'raw' for .raw)"
                )
            obs, layer = adata.obs, self.layer
            adata.file.close()

            def read(start: int, stop: int) -> sp.csr_matrix:
                return blockread.read_h5ad_rows(path, layer, start, stop)

        elif fmt == "10x_h5":
            group, barcodes, var, columns = tenx_h5_meta(path, genome=self.genome)
            obs, genes = pd.DataFrame(index=pd.Index(barcodes, dtype=str)), var.index

            def read(start: int, stop: int) -> sp.csr_matrix:
                return blockread.read_10x_h5_rows(path, group, start, stop, columns)

        else:  # 10x MEX: the coordinate file, streamed per block
            mtx, barcodes, var, columns = tenx_mtx_meta(path)
            obs, genes = pd.DataFrame(index=pd.Index(barcodes, dtype=str)), var.index
            n_features, n_cells = len(columns), len(barcodes)

            def read(start: int, stop: int) -> sp.csr_matrix:
                return blockread.read_mex_rows(mtx, start, stop, n_features, n_cells, columns)

        handle = _FileHandle(obs, np.asarray(genes, dtype=str), read)
        _FILE_CACHE.clear()  # one open input per worker: bounded memory
        _FILE_CACHE[key] = handle
        return handle

    def _dataset_id(self, path: Path) -> str:
        return path.name

    def is_transient(self, exc: BaseException, stage: str) -> bool:
        """A file that vanished between listing and reading is listed again next run."""
        return super().is_transient(exc, stage) or isinstance(exc, FileNotFoundError)

    def _path_of(self, unit: WorkUnit) -> Path:
        for p in self._paths():
            if self._dataset_id(p) == unit.dataset_id:
                return p
        raise FileNotFoundError(f"{self.name}: no input named {unit.dataset_id}")

    def read(self, unit: WorkUnit) -> CellBlock:
        handle = self._handle(self._path_of(unit))
        X = handle.read(unit.start, unit.stop)
        obs = handle.obs.iloc[unit.start : unit.stop]
        meta = pd.DataFrame(index=obs.index)
        for col in METADATA_COLUMNS:
            src_col = self.obs_columns.get(col, col)
            if src_col in obs.columns:
                meta[col] = obs[src_col].astype(str).to_numpy()
        return CellBlock(
            X=X,
            gene_ids=handle.genes,
            obs_ids=obs.index.to_numpy(dtype=str),
            obs=meta.reset_index(drop=True),
        )


@dataclass(frozen=True)
class _FileHandle:
    """An input opened by a worker: cell metadata, gene ids and a row-block reader."""

    obs: pd.DataFrame
    genes: np.ndarray
    read: Any  # (start, stop) -> CSR block


@dataclass
class H5ADSource(FileSource):
    """``.h5ad`` files (backed, block-wise reads). See :class:`FileSource`."""

    name: str = "h5ad"
    formats: ClassVar[tuple[FileFormat, ...]] = ("h5ad",)
    kind: ClassVar[str] = "h5ad"


@dataclass
class TenXSource(FileSource):
    """10x Cell Ranger outputs: MEX directories and ``.h5`` files. See :class:`FileSource`."""

    name: str = "10x"
    formats: ClassVar[tuple[FileFormat, ...]] = ("10x_mtx", "10x_h5")
    kind: ClassVar[str] = "10x"


@dataclass
class DirectorySource(FileSource):
    """Every input under ``root`` (``.h5ad``, 10x ``.h5``, MEX directories), listed at each build.

    ``dataset_id`` is the path relative to ``root``.
    """

    root: str = ""
    name: str = "dir"
    kind: ClassVar[str] = "directory"

    def spec(self) -> dict:
        return {**super().spec(), "root": str(self.root)}

    def _paths(self) -> list[Path]:
        root = Path(self.root)
        found = []
        for p in sorted(root.rglob("*")):
            if p.name.startswith(".") or ".tmp" in p.name:
                continue
            if p.is_file() and p.suffix.lower() in (".h5ad", ".h5", ".hdf5"):
                found.append(p)
            elif p.is_dir() and _detect(p) == "10x_mtx":
                found.append(p)
        return found

    def _dataset_id(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def _path_of(self, unit: WorkUnit) -> Path:
        p = Path(self.root) / unit.dataset_id
        if not p.exists():
            raise FileNotFoundError(f"{self.name}: {p} disappeared")
        return p


def source_from_config(config: dict) -> Source:
    """Rebuild a source from :meth:`Source.to_config` output (as stored in manifests)."""
    spec = dict(config)
    kind = spec.pop("kind")
    classes = {
        "census": CensusSource,
        "h5ad": H5ADSource,
        "10x": TenXSource,
        "files": FileSource,
        "directory": DirectorySource,
    }
    if kind not in classes:
        raise ValueError(f"unknown source kind {kind!r}; one of {sorted(classes)}")
    return classes[kind](**spec)
