"""Corpus manifests: the commit point of every build or refresh, as typed records.

A manifest is one JSON file, ``manifests/manifest-<version>.json``, written atomically after all
of its shards. Readers take the highest version present and trust only the shards it lists, so
a killed build (shards written, no manifest yet) is invisible, and a finished one appears at once.
It is read and written here only (:func:`load_manifest`, :func:`commit_manifest`), as a
:class:`Manifest`.

Fields (``FORMAT_VERSION`` 2; version 1 files, without ``fingerprint``, ``code_revision`` and
``mlflow_run_id``, are still read)::

    format, format_version, corpus_version, parent_version, kind ("build" | "refresh"),
    created (UTC ISO), code_version (scfm version), code_revision (given by the job, or ""),
    vocab_checksum, n_vocab_genes, schema (column: type),
    config (qc, val_fraction, min_mapped_fraction, block_cells, max_cells_per_shard, compression),
    fingerprint (hash of config + code version + vocabulary: what the shards were made with),
    mlflow_run_id (the build's MLflow run, "" when not tracked),
    sources: [SourceRecord: name, kind, spec, release, config, fingerprint, n_datasets],
    datasets: [DatasetRecord: source, dataset_id, version, fingerprint, n_blocks, n_cells_in,
               n_cells_kept, n_cells_val, nnz_kept, dropped {reason: n}, genes {mapping summary},
               shards [{path, n_cells, bytes}], qc_hist, info],
    quarantined: [QuarantineRecord: source, dataset_id, version, fingerprint, stage, error, info],
    failed: [QuarantineRecord]   infrastructure failures of this run (retried next run, never
                                 carried forward; a changed data set keeps its previous record)
    changes: {added, changed, removed, unchanged}   (lists of "source:dataset_id")
    totals: {n_datasets, n_quarantined, n_cells_in, n_cells_kept, n_cells_train, n_cells_val,
             dropped, nnz_kept, n_shards, bytes}
    qc_hist_edges
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from scfm.corpus.shards import ShardRecord, atomic_write_json, exists, join, read_json

logger = logging.getLogger(__name__)

FORMAT = "scfm-corpus"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_DIR = "manifests"
_NAME_RE = re.compile(r"^manifest-(\d{6,})\.json$")


class ManifestError(ValueError):
    """A manifest this scfm cannot read (another format, a newer version, a broken file)."""


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """A record from a dict: known fields only (extra keys of newer writers are kept out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class UnitResult:
    """What processing one work unit (a block of one data set) produced; also its checkpoint."""

    key: str
    unit: dict[str, Any]
    fingerprint: str
    status: str  # "ok" | "error" (a verdict on the input) | "failed" (infrastructure, this run)
    n_cells_in: int = 0
    n_cells_kept: int = 0
    n_cells_val: int = 0
    nnz_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    shards: list[ShardRecord] = field(default_factory=list)
    genes: dict[str, Any] = field(default_factory=dict)
    hist: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    stage: str = ""  # error: where it failed (read, validate, harmonize, write)
    error: str = ""
    traceback: str = ""
    attempts: int = 1
    node: str = ""  # the Ray node that ran the unit ("" when run in-process)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitResult:
        out = _from_dict(cls, d)
        out.shards = [_from_dict(ShardRecord, s) for s in out.shards]
        return out


@dataclass
class DatasetRecord:
    """One data set of a corpus version: where its cells are and what happened to the others."""

    source: str
    dataset_id: str
    version: str
    fingerprint: str
    n_blocks: int
    n_cells_in: int
    n_cells_kept: int
    n_cells_val: int
    nnz_kept: int
    dropped: dict[str, int]
    genes: dict[str, Any]
    shards: list[ShardRecord]
    qc_hist: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"

    @property
    def label(self) -> str:
        return f"{self.source}:{self.dataset_id}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetRecord:
        out = _from_dict(cls, d)
        out.shards = [_from_dict(ShardRecord, s) for s in out.shards]
        return out


@dataclass
class QuarantineRecord:
    """An input left out of a version, with the stage and the reason."""

    source: str
    dataset_id: str
    version: str
    fingerprint: str
    stage: str
    error: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.source}:{self.dataset_id}"


@dataclass
class SourceRecord:
    name: str
    kind: str
    spec: Any
    release: str
    config: dict[str, Any]
    fingerprint: str
    n_datasets: int


@dataclass
class Manifest:
    """A committed corpus version (see the module docstring for every field)."""

    corpus_version: int
    parent_version: int | None
    kind: str
    created: str
    code_version: str
    vocab_checksum: str
    n_vocab_genes: int
    schema: dict[str, str]
    config: dict[str, Any]
    sources: list[SourceRecord]
    datasets: list[DatasetRecord]
    quarantined: list[QuarantineRecord]
    changes: dict[str, list[str]]
    totals: dict[str, Any]
    qc_hist_edges: dict[str, list[float]] = field(default_factory=dict)
    failed: list[QuarantineRecord] = field(default_factory=list)
    fingerprint: str = ""
    code_revision: str = ""
    mlflow_run_id: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        if d.get("format") != FORMAT:
            raise ManifestError(f"{where} is not an {FORMAT} manifest (format {d.get('format')!r})")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ManifestError(
                f"{where} has format_version {version}; this scfm reads {READABLE_VERSIONS}: "
                "a newer scfm wrote it, upgrade to read this corpus"
            )
        m = _from_dict(cls, d)
        m.sources = [_from_dict(SourceRecord, s) for s in m.sources]
        m.datasets = [DatasetRecord.from_dict(r) for r in m.datasets]
        m.quarantined = [_from_dict(QuarantineRecord, q) for q in m.quarantined]
        m.failed = [_from_dict(QuarantineRecord, q) for q in m.failed]
        return m

    def shard_paths(self) -> list[str]:
        """Relative shard paths, in data set and block order (shards hold both splits)."""
        return [s.path for d in self.datasets for s in d.shards]

    @property
    def checksum(self) -> str:
        """sha256 of the manifest's canonical JSON: what a run trained on, exactly."""
        raw = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()

    @property
    def n_cells(self) -> int:
        return int(self.totals["n_cells_kept"])


def manifest_path(root: str, version: int) -> str:
    return join(root, MANIFEST_DIR, f"manifest-{version:06d}.json")


def list_versions(fs: pafs.FileSystem, root: str) -> list[int]:
    """Committed corpus versions, ascending (temporary files are ignored)."""
    base = join(root, MANIFEST_DIR)
    if not exists(fs, base):
        return []
    versions = []
    for info in fs.get_file_info(pafs.FileSelector(base)):
        m = _NAME_RE.match(info.base_name)
        if m and info.type == pafs.FileType.File:
            versions.append(int(m.group(1)))
    return sorted(versions)


def load_manifest(fs: pafs.FileSystem, root: str, version: int | None = None) -> Manifest | None:
    """The manifest of ``version`` (default: the newest), or None when there is none."""
    versions = list_versions(fs, root)
    if version is None:
        if not versions:
            return None
        version = versions[-1]
    elif version not in versions:
        if versions and 0 < version < versions[0]:
            raise FileNotFoundError(
                f"corpus {root} version {version} was retired by garbage collection (a build "
                f"keeps its newest keep_versions manifests and their shards); available: "
                f"{versions}. Pin a kept version, or raise --keep-versions for future builds."
            )
        raise FileNotFoundError(f"corpus {root} has no version {version}; has {versions}")
    path = manifest_path(root, version)
    return Manifest.from_dict(read_json(fs, path), where=path)


def commit_manifest(fs: pafs.FileSystem, root: str, manifest: Manifest) -> str:
    """Write a manifest atomically; refuses to overwrite a committed version."""
    path = manifest_path(root, manifest.corpus_version)
    if exists(fs, path):
        raise FileExistsError(f"{path} already committed (another build running?)")
    atomic_write_json(fs, path, manifest.to_dict())
    return path
