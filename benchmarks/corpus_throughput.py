"""Corpus build throughput and worker memory, from h5ad files and from a Census-shaped SOMA store.

Inputs are synthetic cells resampled from real Kang 2018 PBMCs (``scfm.corpus.synthetic``) at a
Census-like ~2,000 nonzero genes per cell; they are generated once into ``--workdir`` and reused.

First, one block in detail (``--block-cells`` cells): seconds per stage of this pipeline against
the previous implementation on the same block in the same run (vocabulary mapping by a scipy
sparse product + ``sort_indices``; parquet list columns PLAIN-encoded), as ratios.

Then, for each (format, size), it runs the corpus job twice:

1. ``executor="local"`` (one process, one core): cells/s of harmonize + QC + write (the per-block
   timings: count validation, vocabulary mapping of the matrix, QC, Arrow table, parquet write;
   read excluded, and the one-off gene-list mapping reported apart) and of read + the rest;
2. ``executor="ray"`` on local Ray with ``--cpus`` CPUs: wall-clock cells/s, per core, and the
   peak RSS of any Ray worker (``ru_maxrss`` at the end of each block).

Default run (a few minutes on 2 cores)::

    python benchmarks/corpus_throughput.py

Scaling (memory flat from 100k to 1M cells; generates ~20 GB of inputs, tens of minutes)::

    python benchmarks/corpus_throughput.py --formats soma h5ad --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _inputs(workdir: Path, fmt: str, n: int, block: int) -> Path:
    import synthetic

    path = workdir / f"{fmt}-{n}"
    if not path.exists():
        t0 = time.perf_counter()
        if fmt == "soma":
            synthetic.write_census_store(path, n, cells_per_dataset=max(block * 5, 50_000))
        else:
            synthetic.write_h5ad_dir(path, n, cells_per_file=max(block * 5, 50_000))
        print(f"generated {fmt} {n:,} cells in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _source(fmt: str, path: Path):
    from scfm.corpus.sources import CensusSource, DirectorySource

    return CensusSource(uri=str(path)) if fmt == "soma" else DirectorySource(root=str(path))


def run_one(fmt: str, n: int, args) -> dict:
    import ray

    from scfm.corpus.build import BuildConfig, build_corpus
    from scfm.corpus.qc import QCConfig

    path = _inputs(args.workdir, fmt, n, args.block_cells)
    row: dict = {"format": fmt, "cells": n}
    for executor in ("local", "ray"):
        out = args.workdir / f"corpus-{fmt}-{n}-{executor}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = BuildConfig(
            output=str(out),
            sources=[_source(fmt, path)],
            qc=QCConfig(),
            executor=executor,
            block_cells=args.block_cells,
            mlflow=False,
            resume=False,
            progress=False,
        )
        if executor == "ray":  # fresh workers: ru_maxrss is a process's lifetime peak
            ray.shutdown()
            ray.init(
                address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False
            )
        t0 = time.perf_counter()
        res = build_corpus(cfg)
        wall = time.perf_counter() - t0
        units = [u for u in res.unit_results if u.ok]
        if res.manifest.quarantined:
            raise RuntimeError(f"inputs quarantined: {res.manifest.quarantined}")
        cells = sum(u.n_cells_in for u in units)
        t = res.manifest.totals
        if executor == "local":
            hw = sum(u.timing["harmonize_s"] + u.timing["write_s"] for u in units)
            rd = sum(u.timing["read_s"] for u in units)
            row["local_harmonize_qc_write_cells_s"] = cells / hw
            row["local_read_cells_s"] = cells / rd
            row["local_end_to_end_cells_s"] = cells / (hw + rd)
            row["gene_mapping_one_off_s"] = sum(u.timing["map_s"] for u in units)
        else:
            row["ray_wall_s"] = wall
            row["ray_cells_s"] = cells / wall
            row["ray_cells_s_per_core"] = cells / wall / args.cpus
            row["peak_worker_rss_mb"] = max(u.peak_rss_mb for u in units)
            row["bytes_per_cell"] = t["bytes"] / max(t["n_cells_kept"], 1)
            row["nnz_per_cell"] = t["nnz_kept"] / max(t["n_cells_kept"], 1)
            row["cells_kept"] = t["n_cells_kept"]
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return row


def _best(f, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def block_breakdown(block_cells: int, workdir: Path) -> list[tuple[str, float, float]]:
    """``(stage, baseline s, scfm s)`` for one synthetic block at ~2,000 nonzeros per cell."""
    import numpy as np
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    import synthetic

    from scfm.corpus.harmonize import CellBlock, map_block, pack_block
    from scfm.corpus.qc import QCConfig
    from scfm.corpus.shards import ROW_GROUP_CELLS, write_shards
    from scfm.data.genes import GeneVocab, gene_mapping
    from scfm.data.validate import check_counts

    pool = synthetic.load_pool()
    k, p = synthetic.calibrate(pool, 2000)
    X, _ = next(synthetic.synthetic_chunks(pool, block_cells, k=k, p=p, chunk_cells=block_cells))
    mapping = gene_mapping(GeneVocab.load(), pool.feature_ids)
    map_block(X, mapping)  # numba: compile or load from cache outside the timing

    def scipy_map():  # the previous implementation: 0/1 product, sort, then QC sums apart
        out = mapping.apply(X)
        mito = np.zeros(X.shape[1])
        mito[mapping.mapped] = mapping.vocab.mito_mask[mapping.index[mapping.mapped]]
        return out, np.asarray(X.sum(axis=1)).ravel(), X @ mito

    t_check, _ = _best(lambda: check_counts(X))
    t_scipy, _ = _best(scipy_map)
    t_map, mapped = _best(lambda: map_block(X, mapping))  # count checks included
    block = CellBlock(X, pool.feature_ids, np.array([f"c{i}" for i in range(X.shape[0])]))
    t_table, hb = _best(  # QC decisions, kept rows, Arrow table: the same code in both
        lambda: pack_block(block, *mapped, source="s", dataset_id="d", qc=QCConfig())
    )
    out = workdir / "breakdown"
    out.mkdir(parents=True, exist_ok=True)
    plain = out / "plain.parquet"
    t_plain, _ = _best(
        lambda: pq.write_table(hb.table, plain, compression="zstd", row_group_size=ROW_GROUP_CELLS)
    )
    fs = pafs.LocalFileSystem()
    t_write, shards = _best(lambda: write_shards(fs, str(out), "ours", hb.table, 10**9))
    n = X.shape[0]
    print(
        f"one block: {n:,} cells, {X.nnz / n:,.0f} nonzeros per cell; parquet bytes per cell: "
        f"plain {plain.stat().st_size / n:,.0f}, scfm {shards[0].bytes / n:,.0f}"
    )
    return [
        ("count validation + vocabulary mapping + QC sums", t_check + t_scipy, t_map),
        ("QC + Arrow table", t_table, t_table),
        ("parquet write (zstd)", t_plain, t_write),
        (
            "validate + harmonize + write",
            t_check + t_scipy + t_table + t_plain,
            t_map + t_table + t_write,
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", nargs="+", default=["h5ad", "soma"], choices=["h5ad", "soma"])
    p.add_argument("--sizes", nargs="+", type=int, default=[20_000])
    p.add_argument("--block-cells", type=int, default=10_000)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("results/bench-corpus"))
    p.add_argument("--keep", action="store_true", help="keep the built corpora")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--no-breakdown", action="store_true", help="skip the one-block comparison")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.no_breakdown:
        stages = block_breakdown(args.block_cells, args.workdir)
        print("| stage | previous (s) | scfm (s) | speed-up |\n|---|---|---|---|")
        for name, base, ours in stages:
            print(f"| {name} | {base:.3f} | {ours:.3f} | {base / ours:.1f}× |")
        print(
            f"| cells/s per core, validate + harmonize + write | "
            f"{args.block_cells / stages[-1][1]:,.0f} | {args.block_cells / stages[-1][2]:,.0f} "
            f"| |",
            flush=True,
        )
    rows = [run_one(fmt, n, args) for fmt in args.formats for n in args.sizes]
    cols = [
        ("format", "{}"),
        ("cells", "{:,}"),
        ("nnz_per_cell", "{:,.0f}"),
        ("local_harmonize_qc_write_cells_s", "{:,.0f}"),
        ("local_read_cells_s", "{:,.0f}"),
        ("local_end_to_end_cells_s", "{:,.0f}"),
        ("ray_cells_s", "{:,.0f}"),
        ("ray_cells_s_per_core", "{:,.0f}"),
        ("peak_worker_rss_mb", "{:,.0f}"),
        ("bytes_per_cell", "{:,.0f}"),
    ]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f.format(r[c]) for c, f in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
