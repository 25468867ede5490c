"""Build or refresh a corpus: sources → blocks → harmonize + QC → parquet shards → manifest.

The plan is made on the driver (list data sets and their versions, split them into blocks); the
blocks run as one Ray Data job (``from_items`` → ``map_batches``, one block per call, so no worker
holds more than one block); the manifest is committed last. Ray is imported only inside
:func:`_run_ray`; ``executor="local"`` runs the same per-block function in-process.

Kill safety: each finished block writes its shards (tmp + rename) and then a checkpoint under
``_units/``; a re-run reuses finished blocks and rewrites the others under the same names. Only
the manifest commit makes a version visible. Refresh reuses, from the newest manifest, every data
set whose version and configuration fingerprint are unchanged, and processes the rest; shard
names are deterministic, so a refresh lists exactly the shards a fresh build would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import subprocess
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from scfm import __version__
from scfm.corpus import manifest as mf
from scfm.corpus.harmonize import SCHEMA, map_block, pack_block
from scfm.corpus.qc import DROP_REASONS, QCConfig
from scfm.corpus.shards import (
    TMP_MARK,
    UNIT_DIR,
    atomic_write_json,
    exists,
    join,
    list_files,
    read_json,
    resolve,
    shard_stem,
    unit_key,
    write_shards,
)
from scfm.corpus.sources import DatasetRef, Source, WorkUnit
from scfm.data.genes import gene_mapping
from scfm.data.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.runtime import ensure_ray

logger = logging.getLogger(__name__)

Executor = Literal["ray", "local"]
# QC histogram bins over log10(x + 1): total counts 0..10^6, expressed genes 0..10^5.
HIST_EDGES = {
    "total_counts": np.linspace(0.0, 6.0, 49).tolist(),
    "n_genes": np.linspace(0.0, 5.0, 41).tolist(),
}


@dataclass
class BuildConfig:
    """Everything a build or refresh needs.

    Attributes
    ----------
    output
        Corpus root: a local directory or a pyarrow filesystem URI (``s3://bucket/corpus``).
    sources
        The sources; names must be unique.
    qc
        Cell filters.
    block_cells
        Cells per work unit (the most any worker holds at once).
    max_cells_per_shard
        Upper bound on rows per parquet file (a block writes ``ceil(kept / max)`` files).
    val_fraction
        Fraction of cells (by hash of ``cell_id``) in the ``val`` split.
    min_mapped_fraction
        Data sets whose genes map below this fraction are quarantined.
    refresh
        Reuse unchanged data sets of the newest manifest; process only new or changed ones.
    strict
        Exit code 1 when any input was quarantined.
    resume
        Reuse finished blocks of an interrupted run (``_units/`` checkpoints).
    keep_versions
        Shards referenced by the newest ``keep_versions`` manifests survive garbage collection.
    mlflow
        Log the build as a run in MLflow experiment ``corpus``.
    executor
        ``"ray"`` (local Ray by default, or the cluster at ``ray_address`` / ``RAY_ADDRESS``) or
        ``"local"`` (in-process, serial).
    """

    output: str
    sources: Sequence[Source]
    qc: QCConfig = field(default_factory=QCConfig)
    block_cells: int = 20_000
    max_cells_per_shard: int = 100_000
    val_fraction: float = 0.02
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION
    refresh: bool = False
    strict: bool = False
    resume: bool = True
    keep_versions: int = 2
    mlflow: bool = True
    run_name: str | None = None
    executor: Executor = "ray"
    ray_address: str | None = None
    num_cpus_per_unit: float = 1.0
    progress: bool = True
    compression: str = "zstd"

    def settings(self) -> dict:
        """The parts of the configuration that shape shard content (plus layout knobs)."""
        return {
            "qc": self.qc.to_dict(),
            "val_fraction": self.val_fraction,
            "min_mapped_fraction": self.min_mapped_fraction,
            "block_cells": self.block_cells,
            "max_cells_per_shard": self.max_cells_per_shard,
            "compression": self.compression,
        }


@dataclass
class BuildResult:
    """What a build produced."""

    manifest: dict
    manifest_path: str
    exit_code: int
    histograms: dict
    units_processed: int
    units_reused: int
    seconds: float
    unit_results: list[dict] = field(default_factory=list, repr=False)
    mlflow_run_id: str | None = None


def code_version() -> str:
    """``scfm`` version plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def fingerprint(cfg: BuildConfig, source: Source, vocab_checksum: str) -> str:
    """Hash of everything that determines a data set's shard content, except its version."""
    ident = {
        "schema": str(SCHEMA),
        "scfm": __version__,
        "vocab": vocab_checksum,
        "qc": cfg.qc.to_dict(),
        "val_fraction": cfg.val_fraction,
        "min_mapped_fraction": cfg.min_mapped_fraction,
        "max_cells_per_shard": cfg.max_cells_per_shard,
        "compression": cfg.compression,
        "source": source.spec(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- per-unit work


@dataclass(frozen=True)
class UnitContext:
    """Per-job constants a worker needs (small, pickled once per task)."""

    output: str
    block_cells: int
    qc: QCConfig
    val_fraction: float
    min_mapped_fraction: float
    max_cells_per_shard: int
    compression: str


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _hist(values: np.ndarray, edges: list[float]) -> list[int]:
    x = np.clip(np.log10(np.asarray(values, dtype=np.float64) + 1.0), edges[0], edges[-1])
    return np.histogram(x, bins=edges)[0].astype(int).tolist()


def process_unit(source: Source, unit: WorkUnit, fp: str, ctx: UnitContext) -> dict:
    """Read, validate, harmonize, QC and write one block; return its result record.

    Never raises for bad input: failures come back as ``status="error"`` with the stage and the
    message, and the data set is quarantined by the driver.
    """
    from scfm.data.genes import GeneVocab
    from scfm.data.validate import check_species

    fs, root = resolve(ctx.output)
    key = unit_key(unit, fp, ctx.block_cells)
    base = {"key": key, "unit": unit.to_dict(), "fingerprint": fp}
    stage = "read"
    t0 = time.perf_counter()
    try:
        block = source.read(unit)
        t_read = time.perf_counter()
        stage = "validate"
        mapping = gene_mapping(GeneVocab.load(), block.gene_ids)  # cached per process
        t_map = time.perf_counter()
        check_species(mapping, ctx.min_mapped_fraction)
        rows, stats = map_block(block.X, mapping)  # one pass: vocabulary, QC sums, count checks
        stage = "harmonize"
        hb = pack_block(
            block,
            rows,
            stats,
            source=unit.source,
            dataset_id=unit.dataset_id,
            qc=ctx.qc,
            val_fraction=ctx.val_fraction,
        )
        t_harm = time.perf_counter()
        stage = "write"
        stem = shard_stem(unit, fp, ctx.block_cells)
        shards = write_shards(fs, root, stem, hb.table, ctx.max_cells_per_shard, ctx.compression)
        t_write = time.perf_counter()
        rep = mapping.report
        s = hb.stats
        n_val = int(
            np.count_nonzero(hb.table.column("split").to_numpy(zero_copy_only=False) == "val")
        )
        result = {
            **base,
            "status": "ok",
            "n_cells_in": hb.n_in,
            "n_cells_kept": hb.n_kept,
            "n_cells_val": n_val,
            "dropped": hb.dropped,
            "nnz_kept": int(s.n_genes_vocab[hb.kept].sum()),
            "shards": [sh.to_dict() for sh in shards],
            "genes": {
                "n_input": rep.n_input,
                "n_mapped": rep.n_mapped,
                "fraction_mapped": round(rep.fraction_mapped, 6),
                "by_rule": rep.by_rule,
                "n_collisions": rep.n_collisions,
            },
            "hist": {
                "total_counts": {
                    "all": _hist(s.total_counts, HIST_EDGES["total_counts"]),
                    "kept": _hist(s.total_counts[hb.kept], HIST_EDGES["total_counts"]),
                },
                "n_genes": {
                    "all": _hist(s.n_genes_input, HIST_EDGES["n_genes"]),
                    "kept": _hist(s.n_genes_input[hb.kept], HIST_EDGES["n_genes"]),
                },
            },
            "timing": {
                "read_s": t_read - t0,
                "map_s": t_map - t_read,  # gene mapping; one-off per process and gene list
                "harmonize_s": t_harm - t_map,  # count validation + vocabulary + QC + table
                "write_s": t_write - t_harm,
            },
            "peak_rss_mb": _peak_rss_mb(),
        }
        # The checkpoint comes after the shards: present ⇒ the block's shards are complete.
        atomic_write_json(fs, join(root, UNIT_DIR, f"{key}.json"), result)
        return result
    except Exception as exc:  # noqa: BLE001 - bad inputs are quarantined, not fatal
        logger.warning(
            "%s:%s block %d failed at %s: %s", unit.source, unit.dataset_id, unit.block, stage, exc
        )
        return {
            **base,
            "status": "error",
            "stage": stage,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=3),
            "peak_rss_mb": _peak_rss_mb(),
        }


def _ray_unit_batch(batch, sources: dict, fps: dict, ctx: UnitContext):
    """``map_batches`` body: one work unit per call, returns its result as a JSON row."""
    out = []
    for src_name, unit_json in zip(batch["source"], batch["unit"], strict=True):
        unit = WorkUnit.from_dict(json.loads(str(unit_json)))
        result = process_unit(sources[str(src_name)], unit, fps[str(src_name)], ctx)
        out.append(json.dumps(result))
    return {"result": np.array(out, dtype=object)}


def _run_ray(
    tasks: list[tuple[Source, WorkUnit]], fps: dict, ctx: UnitContext, cfg: BuildConfig
) -> list[dict]:
    import ray

    ensure_ray(cfg.ray_address)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = cfg.progress
    sources = {s.name: s for s, _ in tasks}
    items = [{"source": s.name, "unit": json.dumps(u.to_dict())} for s, u in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _ray_unit_batch,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"sources": sources, "fps": fps, "ctx": ctx},
        num_cpus=cfg.num_cpus_per_unit,
    )
    return [json.loads(r["result"]) for r in ds.iter_rows()]


def _run_local(tasks: list[tuple[Source, WorkUnit]], fps: dict, ctx: UnitContext) -> list[dict]:
    return [process_unit(s, u, fps[s.name], ctx) for s, u in tasks]


# ------------------------------------------------------------------------------- the driver


def _sum_hist(acc: dict, h: dict) -> None:
    for metric, parts in h.items():
        for part, counts in parts.items():
            cur = acc.setdefault(metric, {}).setdefault(part, [0] * len(counts))
            acc[metric][part] = [a + b for a, b in zip(cur, counts, strict=True)]


def _dataset_record(ref: DatasetRef, fp: str, results: list[dict]) -> dict:
    results = sorted(results, key=lambda r: r["unit"]["block"])
    dropped = dict.fromkeys(DROP_REASONS, 0)
    hist: dict = {}
    for r in results:
        for k, v in r["dropped"].items():
            dropped[k] += v
        _sum_hist(hist, r["hist"])
    return {
        "source": ref.source,
        "dataset_id": ref.dataset_id,
        "version": ref.version,
        "status": "ok",
        "fingerprint": fp,
        "n_blocks": len(results),
        "n_cells_in": sum(r["n_cells_in"] for r in results),
        "n_cells_kept": sum(r["n_cells_kept"] for r in results),
        "n_cells_val": sum(r["n_cells_val"] for r in results),
        "nnz_kept": sum(r["nnz_kept"] for r in results),
        "dropped": dropped,
        "genes": results[0]["genes"],
        "shards": [s for r in results for s in r["shards"]],
        "qc_hist": hist,
        "info": ref.info,
    }


def _quarantine(ref: DatasetRef, stage: str, error: str, fingerprint: str) -> dict:
    return {
        "source": ref.source,
        "dataset_id": ref.dataset_id,
        "version": ref.version,
        "fingerprint": fingerprint,
        "stage": stage,
        "error": error,
        "info": ref.info,
    }


def build_corpus(cfg: BuildConfig) -> BuildResult:
    """Build (or with ``cfg.refresh``, refresh) a corpus version and commit its manifest.

    Returns
    -------
    BuildResult
        The committed manifest, its path, and the exit code (1 only with ``strict`` and a
        quarantined input).
    """
    from scfm.data.genes import GeneVocab

    t_start = time.perf_counter()
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    if not cfg.sources:
        raise ValueError("no sources given")
    fs, root = resolve(cfg.output)
    fs.create_dir(root, recursive=True)
    vocab = GeneVocab.load()
    prev = mf.load_manifest(fs, root)
    versions = mf.list_versions(fs, root)
    version = (versions[-1] if versions else 0) + 1
    prev_records = {(d["source"], d["dataset_id"]): d for d in (prev or {}).get("datasets", [])}
    prev_quarantine = {
        (q["source"], q["dataset_id"]): q for q in (prev or {}).get("quarantined", [])
    }
    if cfg.refresh and prev is None:
        logger.info("refresh: no previous manifest under %s, building from scratch", cfg.output)

    ctx = UnitContext(
        cfg.output,
        cfg.block_cells,
        cfg.qc,
        cfg.val_fraction,
        cfg.min_mapped_fraction,
        cfg.max_cells_per_shard,
        cfg.compression,
    )
    fps = {s.name: fingerprint(cfg, s, vocab.checksum) for s in cfg.sources}
    source_entries, records, quarantined = [], [], []
    changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "unchanged": []}
    current_keys: set[tuple[str, str]] = set()
    pending: list[tuple[Source, WorkUnit]] = []
    planned: dict[tuple[str, str], tuple[DatasetRef, list[WorkUnit]]] = {}
    reused_results: dict[str, dict] = {}

    for src in cfg.sources:
        release = src.release()
        refs = src.datasets()
        ids = [r.dataset_id for r in refs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"source {src.name!r} lists duplicated dataset ids")
        source_entries.append(
            {
                "name": src.name,
                "kind": src.kind,
                "spec": src.spec(),
                "release": release,
                "config": src.to_config(),
                "fingerprint": fps[src.name],
                "n_datasets": len(refs),
            }
        )
        for ref in refs:
            key = (ref.source, ref.dataset_id)
            current_keys.add(key)
            label = f"{ref.source}:{ref.dataset_id}"
            old = prev_records.get(key) or prev_quarantine.get(key)
            same = (
                old is not None
                and old["version"] == ref.version
                and old.get("fingerprint") == fps[src.name]
            )
            if old is None:
                changes["added"].append(label)
            else:
                changes["unchanged" if same else "changed"].append(label)
            if cfg.refresh and same and key in prev_quarantine and key not in prev_records:
                quarantined.append(prev_quarantine[key])  # the same bad input: same verdict
                continue
            if ref.error is not None:
                quarantined.append(_quarantine(ref, "open", ref.error, fps[src.name]))
                continue
            if not ref.n_cells:
                quarantined.append(
                    _quarantine(ref, "open", "empty data set: 0 cells", fps[src.name])
                )
                continue
            if cfg.refresh and same:
                records.append(old)
                continue
            units = src.plan(ref, cfg.block_cells)
            planned[key] = (ref, units)
            for u in units:
                k = unit_key(u, fps[src.name], cfg.block_cells)
                ck = join(root, UNIT_DIR, f"{k}.json")
                if cfg.resume and exists(fs, ck):
                    res = read_json(fs, ck)
                    if all(exists(fs, join(root, s["path"])) for s in res["shards"]):
                        reused_results[k] = res
                        continue
                pending.append((src, u))
    changes["removed"] = sorted(
        f"{s}:{d}" for (s, d) in (set(prev_records) | set(prev_quarantine)) - current_keys
    )

    n_units = sum(len(u) for _, u in planned.values())
    logger.info(
        "corpus v%d: %d data sets to process in %d blocks (%d resumed), %d reused, %d quarantined",
        version,
        len(planned),
        n_units,
        len(reused_results),
        len(records),
        len(quarantined),
    )
    if pending:
        run = _run_ray if cfg.executor == "ray" else None
        results = run(pending, fps, ctx, cfg) if run else _run_local(pending, fps, ctx)
    else:
        results = []
    by_key = {r["key"]: r for r in results} | reused_results

    histograms: dict = {}
    for ref, units in planned.values():
        fp = fps[ref.source]
        unit_res = [by_key.get(unit_key(u, fp, cfg.block_cells)) for u in units]
        errors = [r for r in unit_res if r is None or r["status"] != "ok"]
        if errors:
            err = errors[0] or {"stage": "run", "error": "block result missing"}
            quarantined.append(_quarantine(ref, err["stage"], err["error"], fp))
            continue
        records.append(_dataset_record(ref, fp, unit_res))
    for rec in records:
        _sum_hist(histograms, rec.get("qc_hist", {}))
    records.sort(key=lambda d: (d["source"], d["dataset_id"]))
    quarantined.sort(key=lambda d: (d["source"], d["dataset_id"]))

    dropped_total = dict.fromkeys(DROP_REASONS, 0)
    for rec in records:
        for k, v in rec["dropped"].items():
            dropped_total[k] += v
    n_kept = sum(d["n_cells_kept"] for d in records)
    n_val = sum(d["n_cells_val"] for d in records)
    manifest = {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "corpus_version": version,
        "parent_version": prev["corpus_version"] if prev else None,
        "kind": "refresh" if cfg.refresh else "build",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "vocab_checksum": vocab.checksum,
        "n_vocab_genes": len(vocab),
        "schema": {f.name: str(f.type) for f in SCHEMA},
        "config": cfg.settings(),
        "qc_hist_edges": HIST_EDGES,
        "sources": source_entries,
        "datasets": records,
        "quarantined": quarantined,
        "changes": {k: sorted(v) for k, v in changes.items()},
        "totals": {
            "n_datasets": len(records),
            "n_quarantined": len(quarantined),
            "n_cells_in": sum(d["n_cells_in"] for d in records),
            "n_cells_kept": n_kept,
            "n_cells_train": n_kept - n_val,
            "n_cells_val": n_val,
            "dropped": dropped_total,
            "nnz_kept": sum(d["nnz_kept"] for d in records),
            "n_shards": sum(len(d["shards"]) for d in records),
            "bytes": sum(s["bytes"] for d in records for s in d["shards"]),
        },
    }
    path = mf.commit_manifest(fs, root, manifest)
    logger.info("committed %s: %d cells kept of %d", path, n_kept, manifest["totals"]["n_cells_in"])
    collect_garbage(fs, root, cfg.keep_versions)
    exit_code = 1 if (cfg.strict and quarantined) else 0
    result = BuildResult(
        manifest=manifest,
        manifest_path=path,
        exit_code=exit_code,
        histograms=histograms,
        units_processed=len(results),
        units_reused=len(reused_results),
        seconds=time.perf_counter() - t_start,
        unit_results=results,
    )
    if cfg.mlflow:
        from scfm.corpus.build_report import log_build

        result.mlflow_run_id = log_build(result, cfg)
    return result


def collect_garbage(fs, root: str, keep_versions: int = 2) -> int:
    """Delete unit checkpoints, temporary files and shards no kept manifest lists.

    Run after a commit (by :func:`build_corpus`). Returns the number of files removed.
    """
    keep: set[str] = set()
    for v in mf.list_versions(fs, root)[-max(keep_versions, 1) :]:
        keep.update(mf.shard_paths(mf.load_manifest(fs, root, v)))
    removed = 0
    for rel in list_files(fs, root, UNIT_DIR):
        fs.delete_file(join(root, rel))
        removed += 1
    for rel in list_files(fs, root, "shards") + list_files(fs, root, mf.MANIFEST_DIR):
        if (rel.startswith("shards/") and rel not in keep) or TMP_MARK in rel:
            fs.delete_file(join(root, rel))
            removed += 1
    return removed


def summary_rows(manifest: dict) -> list[dict]:
    """One row per data set (and quarantined input) for a summary table."""
    rows = []
    for d in manifest["datasets"]:
        rows.append(
            {
                "source": d["source"],
                "dataset": d["dataset_id"],
                "status": "ok",
                "in": d["n_cells_in"],
                "kept": d["n_cells_kept"],
                "dropped": sum(d["dropped"].values()),
                "genes_mapped": f"{100 * d['genes']['fraction_mapped']:.1f}%",
                "shards": len(d["shards"]),
                "note": "",
            }
        )
    for q in manifest["quarantined"]:
        rows.append(
            {
                "source": q["source"],
                "dataset": q["dataset_id"],
                "status": "quarantined",
                "in": 0,
                "kept": 0,
                "dropped": 0,
                "genes_mapped": "",
                "shards": 0,
                "note": f"{q['stage']}: {q['error']}"[:120],
            }
        )
    return rows


def dropped_by_dataset(manifest: dict) -> dict[str, dict[str, int]]:
    """``{"source:dataset": {reason: n}}`` (handy for checks and reports)."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for d in manifest["datasets"]:
        out[f"{d['source']}:{d['dataset_id']}"] = d["dropped"]
    return dict(out)
