"""Planning a build or refresh: what is new, changed, reused, retired, and which units to run.

:func:`plan_build` runs on the driver. It lists every source's data sets with their versions,
compares them with the newest manifest, and returns a :class:`BuildPlan`: the data sets to
process (split into work units), the records reused unchanged (refresh), the verdicts carried
over, the units an interrupted run already finished, and the changes. Nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from scfm import __version__
from scfm.corpus.harmonize import SCHEMA
from scfm.corpus.manifest import (
    DatasetRecord,
    Manifest,
    QuarantineRecord,
    SourceRecord,
    UnitResult,
)
from scfm.corpus.qc import QCConfig
from scfm.corpus.shards import UNIT_DIR, exists, join, read_json, unit_key
from scfm.corpus.sources import DatasetRef, Source, WorkUnit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContentSettings:
    """The settings that shape shard content (hashed into every data set's fingerprint)."""

    qc: QCConfig
    val_fraction: float
    min_mapped_fraction: float
    max_cells_per_shard: int
    compression: str

    def identity(self) -> dict[str, Any]:
        return {
            "schema": str(SCHEMA),
            "scfm": __version__,
            "qc": self.qc.to_dict(),
            "val_fraction": self.val_fraction,
            "min_mapped_fraction": self.min_mapped_fraction,
            "max_cells_per_shard": self.max_cells_per_shard,
            "compression": self.compression,
        }


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(content: ContentSettings, source: Source, vocab_checksum: str) -> str:
    """Hash of everything that determines a data set's shard content, except its version."""
    return _hash({**content.identity(), "vocab": vocab_checksum, "source": source.spec()})


def corpus_fingerprint(content: ContentSettings, vocab_checksum: str) -> str:
    """Hash of the settings, code version and vocabulary a whole version was made with."""
    return _hash({**content.identity(), "vocab": vocab_checksum})


@dataclass
class PlannedDataset:
    """A data set to (re)process, and its work units."""

    source: Source
    ref: DatasetRef
    fingerprint: str
    units: list[WorkUnit]


@dataclass
class BuildPlan:
    """Everything a build will do, decided before any work starts."""

    version: int
    parent: Manifest | None
    sources: list[SourceRecord]
    fingerprints: dict[str, str]  # source name -> fingerprint
    to_process: list[PlannedDataset]
    reused: list[DatasetRecord]  # refresh: unchanged data sets, carried over as they are
    quarantined: list[QuarantineRecord]  # found while planning, or carried (unchanged input)
    resumed: dict[str, UnitResult]  # unit key -> finished unit of an interrupted run
    block_cells: int
    changes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pending(self) -> list[tuple[Source, WorkUnit]]:
        """Units still to run (not finished by an interrupted run)."""
        return [
            (d.source, u)
            for d in self.to_process
            for u in d.units
            if unit_key(u, d.fingerprint, self.block_cells) not in self.resumed
        ]

    @property
    def n_units(self) -> int:
        return sum(len(d.units) for d in self.to_process)

    def summary(self) -> str:
        return (
            f"corpus v{self.version}: {len(self.to_process)} data sets to process in "
            f"{self.n_units} blocks ({len(self.resumed)} resumed), {len(self.reused)} reused, "
            f"{len(self.quarantined)} quarantined, {len(self.changes.get('removed', []))} retired"
        )


def plan_build(
    sources: Sequence[Source],
    content: ContentSettings,
    *,
    fs: pafs.FileSystem,
    root: str,
    parent: Manifest | None,
    version: int,
    vocab_checksum: str,
    block_cells: int,
    refresh: bool,
    resume: bool,
) -> BuildPlan:
    """Decide what to process, reuse and quarantine (see the module docstring)."""
    names = [s.name for s in sources]
    if not sources:
        raise ValueError("no sources given")
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    prev_records = {(d.source, d.dataset_id): d for d in (parent.datasets if parent else [])}
    prev_quarantine = {(q.source, q.dataset_id): q for q in (parent.quarantined if parent else [])}
    if refresh and parent is None:
        logger.info("refresh: no previous manifest under %s, building from scratch", root)
    fps = {s.name: fingerprint(content, s, vocab_checksum) for s in sources}
    plan = BuildPlan(
        version=version,
        parent=parent,
        sources=[],
        fingerprints=fps,
        to_process=[],
        reused=[],
        quarantined=[],
        resumed={},
        changes={"added": [], "changed": [], "removed": [], "unchanged": []},
        block_cells=block_cells,
    )
    current: set[tuple[str, str]] = set()
    for src in sources:
        release = src.release()
        refs = src.datasets()
        ids = [r.dataset_id for r in refs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"source {src.name!r} lists duplicated dataset ids")
        fp = fps[src.name]
        plan.sources.append(
            SourceRecord(src.name, src.kind, src.spec(), release, src.to_config(), fp, len(refs))
        )
        for ref in refs:
            key = (ref.source, ref.dataset_id)
            current.add(key)
            old = prev_records.get(key) or prev_quarantine.get(key)
            same = old is not None and old.version == ref.version and old.fingerprint == fp
            label = f"{ref.source}:{ref.dataset_id}"
            plan.changes["added" if old is None else "unchanged" if same else "changed"].append(
                label
            )
            if refresh and same and key in prev_quarantine and key not in prev_records:
                plan.quarantined.append(prev_quarantine[key])  # the same bad input: same verdict
                continue
            if ref.error is not None:
                plan.quarantined.append(_quarantine(ref, "open", ref.error, fp))
                continue
            if not ref.n_cells:
                plan.quarantined.append(_quarantine(ref, "open", "empty data set: 0 cells", fp))
                continue
            if refresh and same:
                plan.reused.append(prev_records[key])
                continue
            units = src.plan(ref, block_cells)
            plan.to_process.append(PlannedDataset(src, ref, fp, units))
            if resume:
                plan.resumed.update(_finished_units(fs, root, units, fp, block_cells))
    retired = (set(prev_records) | set(prev_quarantine)) - current
    plan.changes["removed"] = sorted(f"{s}:{d}" for s, d in retired)
    plan.changes = {k: sorted(v) for k, v in plan.changes.items()}
    return plan


def _quarantine(ref: DatasetRef, stage: str, error: str, fp: str) -> QuarantineRecord:
    return QuarantineRecord(ref.source, ref.dataset_id, ref.version, fp, stage, error, ref.info)


def _finished_units(
    fs: pafs.FileSystem, root: str, units: list[WorkUnit], fp: str, block_cells: int
) -> dict[str, UnitResult]:
    """Units of an interrupted run whose checkpoint exists and whose shards have their sizes."""
    done = {}
    for u in units:
        key = unit_key(u, fp, block_cells)
        ck = join(root, UNIT_DIR, f"{key}.json")
        if exists(fs, ck):
            res = UnitResult.from_dict(read_json(fs, ck))
            infos = fs.get_file_info([join(root, s.path) for s in res.shards])
            if all(i.size == s.bytes for i, s in zip(infos, res.shards, strict=True)):
                done[key] = res
    return done
