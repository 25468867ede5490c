"""Build or refresh a corpus: plan → run the work units → assemble → commit the manifest.

    plan_build (driver: list data sets and versions, compare with the newest manifest)
      → run_local / run_ray (one unit function; a unit = one block of one data set)
      → DatasetRecord per data set, QuarantineRecord per failed input
      → Manifest committed atomically → garbage collection

Kill safety: each finished block writes its shards (tmp + rename) and then a checkpoint under
``_units/``; a re-run reuses finished blocks and rewrites the others under the same names. Only
the manifest commit makes a version visible. Refresh reuses, from the newest manifest, every data
set whose version and configuration fingerprint are unchanged, and processes the rest; shard
names are deterministic, so a refresh lists exactly the shards a fresh build would.

MLflow logging happens after :func:`build_corpus` returns (``scfm.corpus.build_report``); the
caller passes the id of the run it opened, so the manifest records it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from scfm import __version__
from scfm.cli_options import option
from scfm.corpus import manifest as mf
from scfm.corpus.execute import (  # noqa: F401 - check_output_reachable: part of this API
    HIST_EDGES,
    UnitContext,
    check_output_reachable,
    run_local,
    run_ray,
)
from scfm.corpus.harmonize import SCHEMA
from scfm.corpus.lease import Lease
from scfm.corpus.manifest import DatasetRecord, Manifest, QuarantineRecord, UnitResult
from scfm.corpus.plan import BuildPlan, ContentSettings, corpus_fingerprint, plan_build
from scfm.corpus.qc import DROP_REASONS, QCConfig
from scfm.corpus.shards import (
    TMP_MARK,
    UNIT_DIR,
    join,
    list_files,
    resolve,
    unit_key,
    verify_shards,
)
from scfm.corpus.sources import Source
from scfm.data.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.storage import absolute_uri

logger = logging.getLogger(__name__)

EXIT_QUARANTINED = 1  # --strict and an input was quarantined
EXIT_FAILED = 75  # EX_TEMPFAIL: a data set failed for infrastructure reasons; run again


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
    retries, retry_backoff_s
        Infrastructure failures of a block (timeouts, connection and object-store errors,
        ``MemoryError``) are retried this many times, waiting ``retry_backoff_s`` · 2^k; a data
        set whose block still fails is reported as failed for this run (exit code
        :data:`EXIT_FAILED`) and tried again by the next build or refresh.
    crash_retries
        A block whose Ray worker process dies (segfault, OOM killer) is retried this many times,
        then its data set is quarantined with ``worker crashed (exit: …)``; the job goes on.
    resume
        Reuse finished blocks of an interrupted run (``_units/`` checkpoints).
    keep_versions
        The newest ``keep_versions`` manifests and their shards survive garbage collection;
        older manifests are retired (deleted) before their shards.
    lease_ttl_s
        The build holds a lease on the output (``_lease.json``), refreshed every third of this;
        a second build or refresh of the same output stops with the holder's host and pid. A
        lease not refreshed for this long (its writer died) is broken with a warning.
    mlflow
        Log the build as a run in MLflow experiment ``corpus`` (done by the caller of
        :func:`build_corpus`, see ``scfm.corpus.build_report.build_and_log``).
    executor
        ``"ray"`` (local Ray by default, or the cluster at ``ray_address`` / ``RAY_ADDRESS``) or
        ``"local"`` (in-process, serial).
    """

    output: str = option(help="Corpus root: path or URI.", flags=("--output", "-o"))
    sources: Sequence[Source] = ()
    qc: QCConfig = field(default_factory=QCConfig)
    block_cells: int = option(20_000, "Cells per work unit (per worker at once).")
    max_cells_per_shard: int = option(100_000, "Max cells per parquet file.")
    val_fraction: float = option(0.02, "Fraction of cells in the val split.")
    min_mapped_fraction: float = option(
        DEFAULT_MIN_MAPPED_FRACTION, "Quarantine data sets with fewer genes in the vocabulary."
    )
    refresh: bool = False
    strict: bool = option(False, "Exit 1 if any input was quarantined.")
    resume: bool = option(True, "Reuse blocks finished by an interrupted run.")
    retries: int = option(2, "Retries of a block after an infrastructure failure.")
    retry_backoff_s: float = option(1.0, "First retry delay in seconds (doubles each retry).")
    crash_retries: int = option(2, "Retries of a block whose worker process died (Ray).")
    keep_versions: int = option(2, "Manifests (and their shards) garbage collection keeps.")
    lease_ttl_s: float = option(600.0, "Writer lease on the output: expiry, refreshed at 1/3.")
    mlflow: bool = option(True, "Log the run to MLflow experiment 'corpus'.")
    run_name: str | None = option(None, "MLflow run name (default: kind and version).")
    executor: str = option("ray", "'ray' (local or RAY_ADDRESS) or 'local'.")
    ray_address: str | None = option(None, "Ray cluster address (default: local).")
    num_cpus_per_unit: float = option(1.0, "CPUs per work unit (Ray task).")
    progress: bool = option(True, "Show Ray Data progress bars.")
    compression: str = option("zstd", "Parquet compression.")
    code_revision: str = option("", "The job's code revision (e.g. a git commit), recorded as is.")

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output: give the corpus root (a path or URI)")
        if self.executor not in ("ray", "local"):
            raise ValueError(f"executor must be 'ray' or 'local', got {self.executor!r}")

    def content(self) -> ContentSettings:
        """The settings that shape shard content."""
        return ContentSettings(
            self.qc,
            self.val_fraction,
            self.min_mapped_fraction,
            self.max_cells_per_shard,
            self.compression,
        )

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

    manifest: Manifest
    manifest_path: str
    exit_code: int
    histograms: dict
    units_processed: int
    units_reused: int
    seconds: float
    changes: dict[str, list[str]]  # what this run found: added / changed / removed / unchanged
    unit_results: list[UnitResult] = field(default_factory=list, repr=False)
    mlflow_error: str = ""  # set when MLflow failed after the commit (the corpus is complete)
    committed: bool = True  # False: a refresh found nothing to do; ``manifest`` is the newest

    @property
    def mlflow_run_id(self) -> str:
        return self.manifest.mlflow_run_id


def _qc_histograms(records: Sequence[DatasetRecord]) -> dict:
    """The QC histograms of ``records`` summed: metric -> part -> counts per bin."""
    histograms: dict = {}
    for rec in records:
        _sum_hist(histograms, rec.qc_hist)
    return histograms


def _sum_hist(acc: dict, h: dict) -> None:
    for metric, parts in h.items():
        for part, counts in parts.items():
            cur = acc.setdefault(metric, {}).setdefault(part, [0] * len(counts))
            acc[metric][part] = [a + b for a, b in zip(cur, counts, strict=True)]


def _dataset_record(planned, results: list[UnitResult]) -> DatasetRecord:
    results = sorted(results, key=lambda r: r.unit["block"])
    dropped = dict.fromkeys(DROP_REASONS, 0)
    hist: dict = {}
    for r in results:
        for k, v in r.dropped.items():
            dropped[k] += v
        _sum_hist(hist, r.hist)
    ref = planned.ref
    return DatasetRecord(
        source=ref.source,
        dataset_id=ref.dataset_id,
        version=ref.version,
        fingerprint=planned.fingerprint,
        n_blocks=len(results),
        n_cells_in=sum(r.n_cells_in for r in results),
        n_cells_kept=sum(r.n_cells_kept for r in results),
        n_cells_val=sum(r.n_cells_val for r in results),
        nnz_kept=sum(r.nnz_kept for r in results),
        dropped=dropped,
        genes=results[0].genes,
        shards=[s for r in results for s in r.shards],
        qc_hist=hist,
        info=ref.info,
    )


def _run_units(plan: BuildPlan, cfg: BuildConfig) -> list[UnitResult]:
    pending = plan.pending
    if not pending:
        return []
    ctx = UnitContext(
        absolute_uri(cfg.output),  # resolved here, once: workers may have another cwd
        cfg.block_cells,
        cfg.qc,
        cfg.val_fraction,
        cfg.min_mapped_fraction,
        cfg.max_cells_per_shard,
        cfg.compression,
        cfg.retries,
        cfg.retry_backoff_s,
    )
    if cfg.executor == "local":
        return run_local(pending, plan.fingerprints, ctx)
    return run_ray(
        pending,
        plan.fingerprints,
        ctx,
        ray_address=cfg.ray_address,
        num_cpus_per_unit=cfg.num_cpus_per_unit,
        progress=cfg.progress,
        crash_retries=cfg.crash_retries,
    )


def _assemble(
    plan: BuildPlan, results: list[UnitResult]
) -> tuple[list[DatasetRecord], list[QuarantineRecord], list[QuarantineRecord]]:
    """Records, quarantined inputs and failed-this-run data sets of a build.

    A data set with a block that failed on its data (``status="error"``) is quarantined; one
    whose block failed for infrastructure reasons (``status="failed"``, retries exhausted) is
    reported in ``failed`` and keeps the previous version's record if there is one.
    """
    by_key = {r.key: r for r in results} | plan.resumed
    records, quarantined, failed = list(plan.reused), list(plan.quarantined), []
    previous = {(d.source, d.dataset_id): d for d in (plan.parent.datasets if plan.parent else [])}
    for d in plan.to_process:
        unit_res = [by_key.get(unit_key(u, d.fingerprint, plan.block_cells)) for u in d.units]
        bad = [r for r in unit_res if r is None or not r.ok]
        if not bad:
            records.append(_dataset_record(d, unit_res))
            continue
        verdicts = [r for r in bad if r is not None and r.status == "error"]
        err = verdicts[0] if verdicts else bad[0]
        stage, error = (err.stage, err.error) if err else ("run", "block result missing")
        rec = QuarantineRecord(
            d.ref.source, d.ref.dataset_id, d.ref.version, d.fingerprint, stage, error, d.ref.info
        )
        if verdicts:
            quarantined.append(rec)
            continue
        failed.append(rec)
        old = previous.get((d.ref.source, d.ref.dataset_id))
        if old is not None and old.fingerprint == d.fingerprint:
            # serve the previous version (same settings) until this one can be read
            records.append(old)
    records.sort(key=lambda r: (r.source, r.dataset_id))
    quarantined.sort(key=lambda q: (q.source, q.dataset_id))
    failed.sort(key=lambda q: (q.source, q.dataset_id))
    return records, quarantined, failed


def _totals(records: list[DatasetRecord], n_quarantined: int, n_failed: int = 0) -> dict:
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for rec in records:
        for k, v in rec.dropped.items():
            dropped[k] += v
    n_kept = sum(d.n_cells_kept for d in records)
    n_val = sum(d.n_cells_val for d in records)
    return {
        "n_datasets": len(records),
        "n_quarantined": n_quarantined,
        "n_failed": n_failed,
        "n_cells_in": sum(d.n_cells_in for d in records),
        "n_cells_kept": n_kept,
        "n_cells_train": n_kept - n_val,
        "n_cells_val": n_val,
        "dropped": dropped,
        "nnz_kept": sum(d.nnz_kept for d in records),
        "n_shards": sum(len(d.shards) for d in records),
        "bytes": sum(s.bytes for d in records for s in d.shards),
    }


def build_corpus(cfg: BuildConfig, *, mlflow_run_id: str = "") -> BuildResult:
    """Build (or with ``cfg.refresh``, refresh) a corpus version and commit its manifest.

    Parameters
    ----------
    mlflow_run_id
        The MLflow run the caller opened for this build; recorded in the manifest, so
        pretraining runs link to it.

    Returns
    -------
    BuildResult
        The committed manifest, its path, and the exit code: :data:`EXIT_FAILED` (75) when a
        data set failed for infrastructure reasons, 1 with ``strict`` and a quarantined input,
        else 0.
    """
    t_start = time.perf_counter()
    fs, root = resolve(cfg.output)
    fs.create_dir(root, recursive=True)
    with Lease(fs, root, ttl_s=cfg.lease_ttl_s) as lease:
        return _build_leased(cfg, fs, root, lease, mlflow_run_id, t_start)


def _build_leased(
    cfg: BuildConfig, fs, root: str, lease: Lease, mlflow_run_id: str, t_start: float
) -> BuildResult:
    from scfm.data.genes import GeneVocab

    vocab = GeneVocab.load()
    parent = mf.load_manifest(fs, root)
    versions = mf.list_versions(fs, root)
    sources = [s.pinned() for s in cfg.sources]  # aliases resolved once, here
    plan = plan_build(
        sources,
        cfg.content(),
        fs=fs,
        root=root,
        parent=parent,
        version=(versions[-1] if versions else 0) + 1,
        vocab_checksum=vocab.checksum,
        block_cells=cfg.block_cells,
        refresh=cfg.refresh,
        resume=cfg.resume,
    )
    logger.info(plan.summary())
    if cfg.refresh and parent is not None and _up_to_date(plan, parent):
        logger.info(
            "corpus v%d is up to date: the refresh found nothing to do and commits no new "
            "version", parent.corpus_version,
        )  # fmt: skip
        verify_shards(fs, root, [s for rec in parent.datasets for s in rec.shards])
        lease.check()  # still the only writer
        collect_garbage(fs, root, cfg.keep_versions)  # leftovers of a killed earlier run
        return BuildResult(
            manifest=parent,
            manifest_path=mf.manifest_path(root, parent.corpus_version),
            exit_code=_exit_code(cfg, parent.quarantined, parent.failed),
            histograms=_qc_histograms(parent.datasets),
            units_processed=0,
            units_reused=0,
            seconds=time.perf_counter() - t_start,
            changes=plan.changes,
            committed=False,
        )
    results = _run_units(plan, cfg)
    records, quarantined, failed = _assemble(plan, results)
    for f in failed:
        logger.warning(
            "%s:%s failed this run at %s (%s); it will be tried again by the next run",
            f.source, f.dataset_id, f.stage, f.error,
        )  # fmt: skip
    manifest = Manifest(
        corpus_version=plan.version,
        parent_version=parent.corpus_version if parent else None,
        kind="refresh" if cfg.refresh else "build",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        code_version=__version__,
        code_revision=cfg.code_revision,
        vocab_checksum=vocab.checksum,
        n_vocab_genes=len(vocab),
        schema={f.name: str(f.type) for f in SCHEMA},
        config=cfg.settings(),
        fingerprint=corpus_fingerprint(cfg.content(), vocab.checksum),
        mlflow_run_id=mlflow_run_id,
        qc_hist_edges=HIST_EDGES,
        sources=plan.sources,
        datasets=records,
        quarantined=quarantined,
        failed=failed,
        changes=plan.changes,
        totals=_totals(records, len(quarantined), len(failed)),
    )
    verify_shards(fs, root, [s for rec in records for s in rec.shards])  # before the commit
    lease.check()  # still the only writer
    path = mf.commit_manifest(fs, root, manifest)
    logger.info(
        "committed %s: %d cells kept of %d",
        path,
        manifest.totals["n_cells_kept"],
        manifest.totals["n_cells_in"],
    )
    collect_garbage(fs, root, cfg.keep_versions)
    return BuildResult(
        manifest=manifest,
        manifest_path=path,
        exit_code=_exit_code(cfg, quarantined, failed),
        histograms=_qc_histograms(records),
        units_processed=len(results),
        units_reused=len(plan.resumed),
        seconds=time.perf_counter() - t_start,
        changes=plan.changes,
        unit_results=results,
    )


def _up_to_date(plan: BuildPlan, parent: Manifest) -> bool:
    """Whether a refresh ``plan`` would commit what ``parent`` already lists: no data set added,
    changed, removed or failed, the same sources (releases included) and settings."""
    import json
    from dataclasses import asdict

    def canonical(sources) -> list[str]:
        return sorted(json.dumps(asdict(s), sort_keys=True, default=str) for s in sources)

    return (
        not plan.to_process
        and not any(plan.changes[k] for k in ("added", "changed", "removed"))
        and not parent.failed
        and sorted(plan.quarantined, key=lambda q: (q.source, q.dataset_id)) == parent.quarantined
        and canonical(plan.sources) == canonical(parent.sources)
    )


def _exit_code(cfg: BuildConfig, quarantined: list, failed: list) -> int:
    if failed:
        return EXIT_FAILED
    return EXIT_QUARANTINED if (cfg.strict and quarantined) else 0


def collect_garbage(fs, root: str, keep_versions: int = 2) -> int:
    """Retire old manifests, then delete files no kept manifest lists.

    Keeps the newest ``keep_versions`` manifests and every shard they list; deletes older
    manifests first (so no manifest ever lists a deleted shard), then unit checkpoints,
    temporary files and unlisted shards. Run by :func:`build_corpus` after a commit, under the
    writer lease (no other writer's files are in flight). Returns the number of files removed.
    """
    versions = mf.list_versions(fs, root)
    kept = versions[-max(keep_versions, 1) :]
    keep: set[str] = set()
    for v in kept:
        keep.update(mf.load_manifest(fs, root, v).shard_paths())
    removed = 0
    for v in versions[: len(versions) - len(kept)]:
        fs.delete_file(mf.manifest_path(root, v))
        logger.info("retired corpus version %d (keep_versions=%d)", v, keep_versions)
        removed += 1
    for rel in list_files(fs, root, UNIT_DIR):
        fs.delete_file(join(root, rel))
        removed += 1
    for rel in list_files(fs, root, "shards") + list_files(fs, root, mf.MANIFEST_DIR):
        if (rel.startswith("shards/") and rel not in keep) or TMP_MARK in rel:
            fs.delete_file(join(root, rel))
            removed += 1
    return removed


def summary_rows(manifest: Manifest) -> list[dict]:
    """One row per data set (and quarantined input) for a summary table."""
    rows = []
    for d in manifest.datasets:
        rows.append(
            {
                "source": d.source,
                "dataset": d.dataset_id,
                "status": "ok",
                "in": d.n_cells_in,
                "kept": d.n_cells_kept,
                "dropped": sum(d.dropped.values()),
                "genes_mapped": f"{100 * d.genes['fraction_mapped']:.1f}%",
                "shards": len(d.shards),
                "note": "",
            }
        )
    for q in manifest.quarantined:
        rows.append(
            {
                "source": q.source,
                "dataset": q.dataset_id,
                "status": "quarantined",
                "in": 0,
                "kept": 0,
                "dropped": 0,
                "genes_mapped": "",
                "shards": 0,
                "note": f"{q.stage}: {q.error}"[:120],
            }
        )
    for f in manifest.failed:
        rows.append(
            {
                "source": f.source,
                "dataset": f.dataset_id,
                "status": "failed (retry)",
                "in": 0,
                "kept": 0,
                "dropped": 0,
                "genes_mapped": "",
                "shards": 0,
                "note": f"{f.stage}: {f.error}"[:120],
            }
        )
    return rows
