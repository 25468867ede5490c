"""Running work units: one unit function, a local and a Ray executor.

:func:`process_unit` reads one block, validates it, maps genes, applies QC and writes its shards
and a checkpoint. It never raises for bad input: a failure comes back as a :class:`UnitResult`
with ``status="error"``, the stage and the message, and the driver quarantines the data set.
Infrastructure failures (``Source.is_transient``: timeouts, connection and object-store errors,
``MemoryError``, a store that changed since planning) are retried ``retries`` times with
exponential backoff; if they persist the result has ``status="failed"`` and the driver reports
the data set as failed for this run only.
``run_local`` calls it in-process; ``run_ray`` runs one unit per Ray Data task (no worker holds
more than one block).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scfm.corpus.harmonize import map_block, pack_block
from scfm.corpus.manifest import UnitResult
from scfm.corpus.qc import QCConfig
from scfm.corpus.shards import (
    UNIT_DIR,
    atomic_write_json,
    join,
    resolve,
    shard_stem,
    unit_key,
    write_shards,
)
from scfm.corpus.sources import Source, WorkUnit
from scfm.runtime import ensure_ray

logger = logging.getLogger(__name__)

# QC histogram bins over log10(x + 1): total counts 0..10^6, expressed genes 0..10^5.
HIST_EDGES = {
    "total_counts": np.linspace(0.0, 6.0, 49).tolist(),
    "n_genes": np.linspace(0.0, 5.0, 41).tolist(),
}


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
    retries: int = 2
    retry_backoff_s: float = 1.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _hist(values: np.ndarray, edges: list[float]) -> list[int]:
    x = np.clip(np.log10(np.asarray(values, dtype=np.float64) + 1.0), edges[0], edges[-1])
    return np.histogram(x, bins=edges)[0].astype(int).tolist()


def process_unit(source: Source, unit: WorkUnit, fp: str, ctx: UnitContext) -> UnitResult:
    """Read, validate, harmonize, QC and write one block, retrying infrastructure failures."""
    attempt = 0
    while True:
        attempt += 1
        result, exc = _process_once(source, unit, fp, ctx)
        result.attempts = attempt
        if exc is None or not source.is_transient(exc, result.stage):
            return result
        if attempt > ctx.retries:
            result.status = "failed"
            return result
        delay = ctx.retry_backoff_s * 2 ** (attempt - 1)
        logger.warning(
            "%s:%s block %d: transient failure at %s (%s), retry %d/%d in %.1f s",
            unit.source, unit.dataset_id, unit.block, result.stage, result.error, attempt,
            ctx.retries, delay,
        )  # fmt: skip
        time.sleep(delay)


def _process_once(
    source: Source, unit: WorkUnit, fp: str, ctx: UnitContext
) -> tuple[UnitResult, BaseException | None]:
    """One attempt at a unit: its result, and the exception when it failed."""
    from scfm.data.genes import GeneVocab, gene_mapping
    from scfm.data.validate import check_library_sizes, check_names, check_species

    fs, root = resolve(ctx.output)
    key = unit_key(unit, fp, ctx.block_cells)
    stage = "read"
    t0 = time.perf_counter()
    try:
        block = source.read(unit)
        t_read = time.perf_counter()
        stage = "validate"
        check_names(block.gene_ids, "gene")  # as validate_anndata: duplicates are refused
        mapping = gene_mapping(GeneVocab.load(), block.gene_ids)  # cached per process
        t_map = time.perf_counter()
        check_species(mapping, ctx.min_mapped_fraction)
        rows, stats = map_block(block.X, mapping)  # one pass: vocabulary, QC sums, count checks
        check_library_sizes(stats.total_counts, f"block {unit.block}")  # rounded CPM/TPM
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
        split = hb.table.column("split").to_numpy(zero_copy_only=False)
        result = UnitResult(
            key=key,
            unit=unit.to_dict(),
            fingerprint=fp,
            status="ok",
            n_cells_in=hb.n_in,
            n_cells_kept=hb.n_kept,
            n_cells_val=int(np.count_nonzero(split == "val")),
            dropped=hb.dropped,
            nnz_kept=int(s.n_genes_vocab[hb.kept].sum()),
            shards=list(shards),
            genes={
                "n_input": rep.n_input,
                "n_mapped": rep.n_mapped,
                "fraction_mapped": round(rep.fraction_mapped, 6),
                "by_rule": rep.by_rule,
                "n_collisions": rep.n_collisions,
            },
            hist={
                "total_counts": {
                    "all": _hist(s.total_counts, HIST_EDGES["total_counts"]),
                    "kept": _hist(s.total_counts[hb.kept], HIST_EDGES["total_counts"]),
                },
                "n_genes": {
                    "all": _hist(s.n_genes_input, HIST_EDGES["n_genes"]),
                    "kept": _hist(s.n_genes_input[hb.kept], HIST_EDGES["n_genes"]),
                },
            },
            timing={
                "read_s": t_read - t0,
                "map_s": t_map - t_read,  # gene mapping; one-off per process and gene list
                "harmonize_s": t_harm - t_map,  # count validation + vocabulary + QC + table
                "write_s": t_write - t_harm,
            },
            peak_rss_mb=_peak_rss_mb(),
        )
        # The checkpoint comes after the shards: present ⇒ the block's shards are complete.
        atomic_write_json(fs, join(root, UNIT_DIR, f"{key}.json"), result.to_dict())
        return result, None
    except Exception as exc:  # noqa: BLE001 - bad inputs are quarantined, not fatal
        logger.warning(
            "%s:%s block %d failed at %s: %s", unit.source, unit.dataset_id, unit.block, stage, exc
        )
        return UnitResult(
            key=key,
            unit=unit.to_dict(),
            fingerprint=fp,
            status="error",
            stage=stage,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=3),
            peak_rss_mb=_peak_rss_mb(),
        ), exc


Task = tuple[Source, WorkUnit]


def run_local(tasks: Sequence[Task], fps: dict[str, str], ctx: UnitContext) -> list[UnitResult]:
    """Every unit in this process, one after another."""
    return [process_unit(s, u, fps[s.name], ctx) for s, u in tasks]


def _ray_unit_batch(batch, sources: dict, fps: dict, ctx: UnitContext):
    """``map_batches`` body: one work unit per call, returns its result as a JSON row."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    out = []
    for src_name, unit_json in zip(batch["source"], batch["unit"], strict=True):
        unit = WorkUnit.from_dict(json.loads(str(unit_json)))
        result = process_unit(sources[str(src_name)], unit, fps[str(src_name)], ctx)
        result.node = node
        out.append(json.dumps(result.to_dict()))
    return {"result": np.array(out, dtype=object)}


def _n_ray_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_output_reachable(output: str, n_nodes: int) -> None:
    """Refuse a plain local output path when Ray workers may run on other nodes.

    Each node would write its blocks to its own disk and the manifest would list shards the
    driver's machine does not have. An explicit ``file://`` URI is taken as a shared mount.
    """
    if n_nodes > 1 and "://" not in output:
        raise ValueError(
            f"output {output!r} is a local path, but the Ray cluster has {n_nodes} nodes: "
            "workers on other nodes would write shards to their own disks. Use an object store "
            "URI (-o s3://bucket/corpus) or, for a mount shared by every node, an explicit "
            f"file:// URI (-o file://{os.path.abspath(output)})."
        )


def crashed_result(unit: WorkUnit, fp: str, ctx: UnitContext, attempts: int) -> UnitResult:
    """The result of a unit whose worker process died on every attempt (no Python exception)."""
    return UnitResult(
        key=unit_key(unit, fp, ctx.block_cells),
        unit=unit.to_dict(),
        fingerprint=fp,
        status="error",
        stage="crash",
        error=(
            f"worker crashed (exit: the worker process died on each of {attempts} attempts at "
            "this block, killed by a signal: the OOM killer, a segfault in a reader, or "
            "SIGKILL; see the Ray worker logs)"
        ),
        attempts=attempts,
    )


def run_ray(
    tasks: Sequence[Task],
    fps: dict[str, str],
    ctx: UnitContext,
    *,
    ray_address: str | None = None,
    num_cpus_per_unit: float = 1.0,
    progress: bool = True,
    crash_retries: int = 2,
) -> list[UnitResult]:
    """One Ray Data task per unit (``from_items`` → ``map_batches(batch_size=1)``).

    A task whose worker process dies (segfault, OOM killer) is retried ``crash_retries`` times
    (Ray Data's default is to retry forever), then dropped without failing the job; its unit
    comes back as a ``worker crashed`` error and the driver quarantines its data set.
    """
    import ray.data
    from ray.data import DataContext

    ensure_ray(ray_address)
    check_output_reachable(ctx.output, _n_ray_nodes())  # ctx.output: absolute, from the driver
    data_ctx = DataContext.get_current()
    saved = data_ctx.enable_progress_bars, data_ctx.max_errored_blocks
    data_ctx.enable_progress_bars = progress
    data_ctx.max_errored_blocks = -1  # one block per unit: a dropped block is a crashed unit
    sources = {s.name: s for s, _ in tasks}
    items = [{"source": s.name, "unit": json.dumps(u.to_dict())} for s, u in tasks]
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for system-failure retries of map tasks yet
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                _ray_unit_batch,
                batch_size=1,
                batch_format="numpy",
                fn_kwargs={"sources": sources, "fps": fps, "ctx": ctx},
                num_cpus=num_cpus_per_unit,
                max_retries=crash_retries,
            )
        results = [UnitResult.from_dict(json.loads(r["result"])) for r in ds.iter_rows()]
    finally:
        data_ctx.enable_progress_bars, data_ctx.max_errored_blocks = saved
    done = {r.key for r in results}
    for src, unit in tasks:
        fp = fps[src.name]
        if unit_key(unit, fp, ctx.block_cells) not in done:
            logger.warning(
                "%s:%s block %d: worker crashed %d times", unit.source, unit.dataset_id,
                unit.block, crash_retries + 1,
            )  # fmt: skip
            results.append(crashed_result(unit, fp, ctx, crash_retries + 1))
    return results
