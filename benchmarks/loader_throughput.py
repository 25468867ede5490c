"""Training-loader throughput: shuffled packed batches per second, memory, first batch, mixing.

Builds (once, into ``--workdir``) a synthetic corpus of the workload in issue 15: 200,000 cells
resampled from real Kang PBMCs (``benchmarks/synthetic.py``) in 20 data sets, ~1,860 nonzero
vocabulary genes per cell, through the real corpus build. Then times, each in a fresh process,
batches of 256 cells from:

* ``scfm shuffled (cached)``: the pretraining path (:class:`scfm.corpus.shuffled.ShuffledBatches`)
  with its node-local training cache filled (every epoch after the first);
* ``scfm shuffled (first epoch)``: the same, with an empty cache (decodes parquet, fills it);
* ``scfm shuffled (no cache)``: the same reading parquet every epoch (``data.cache=false``);
* ``Ray Data (previous path)``: what pretraining used before, ``Corpus.ray_dataset`` +
  ``iter_batches(local_shuffle_buffer_size=8×256)`` + ``PackedCells.from_arrow``;
* ``Corpus.iter_batches``: plain pyarrow in file order (not shuffled);
* ``pyarrow random row-group pairs``: the baseline a user writes in ten lines;
* ``annbatch``: annbatch's shuffled ``Loader`` (defaults, sparse CSR out, zarrs codec pipeline
  when installed) over a pre-shuffled collection of the same cells. annbatch needs Python ≥ 3.12:
  pass that interpreter with ``--annbatch-python``; otherwise its row says "not measured".

Each loader runs twice: on a quiet machine and with two busy processes on the cores ("loaded").
Reported: cells/s over ``--cells-per-run`` cells, the peak RSS of the loader's whole process tree
(Ray workers included), the time from constructing the loader to the first batch (Ray start-up
apart), and mixing: the mean over the first 50 batches of the total-variation distance between a
batch's data-set composition and the corpus's (0 = every batch is the corpus in miniature; a
uniform shuffle of 256 cells over 20 equal data sets gives 0.11; file order gives ~0.95).

    python benchmarks/loader_throughput.py --annbatch-python /path/to/py312/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

LOADERS = (
    "scfm shuffled (cached)",
    "scfm shuffled (first epoch)",
    "scfm shuffled (no cache)",
    "Ray Data (previous path)",
    "Corpus.iter_batches",
    "pyarrow random row-group pairs",
    "annbatch",
)
MIX_BATCHES = 50


# ---- the corpus -------------------------------------------------------------------------------
def ensure_corpus(workdir: Path, n_cells: int, n_datasets: int, nnz: float) -> Path:
    """The synthetic corpus (built once; reused when present)."""
    out = workdir / "corpus"
    if (out / "manifests").is_dir():
        return out
    from benchmarks import synthetic
    from scfm.corpus.build import BuildConfig, build_corpus
    from scfm.corpus.qc import QCConfig
    from scfm.corpus.sources import DirectorySource

    h5ad = workdir / "h5ad"
    if not h5ad.is_dir():
        t0 = time.perf_counter()
        info = synthetic.write_h5ad_dir(
            h5ad, n_cells, target_nnz=nnz, cells_per_file=-(-n_cells // n_datasets)
        )
        print(f"generated {info} in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    res = build_corpus(
        BuildConfig(
            output=str(out),
            sources=[DirectorySource(root=str(h5ad))],
            qc=QCConfig(),
            executor="local",
            mlflow=False,
            resume=False,
            progress=False,
        )
    )
    t = res.manifest.totals
    print(
        f"corpus: {t['n_cells_kept']:,} cells ({t['n_cells_train']:,} train) in "
        f"{t['n_datasets']} data sets, {t['nnz_kept'] / t['n_cells_kept']:,.0f} nonzeros/cell, "
        f"{t['bytes'] / 1e6:,.0f} MB, built in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return out


def export_for_annbatch(corpus_dir: Path, out: Path) -> list[Path]:
    """The corpus's training cells as one h5ad per data set (vocabulary columns, CSR counts)."""
    import anndata as ad
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from scfm.corpus.loader import MODEL_COLUMNS, open_corpus
    from scfm.corpus.shards import join
    from scfm.data.packed import N_GENES, PackedCells

    if (out / "done").is_file():
        return sorted(out.glob("*.h5ad"))
    out.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(str(corpus_dir))
    var = pd.DataFrame(index=pd.Index([f"g{i}" for i in range(N_GENES)]))
    paths = []
    for k, d in enumerate(corpus.manifest.datasets):
        parts = []
        for shard in d.shards:
            t = pq.read_table(join(corpus.root, shard.path), columns=[*MODEL_COLUMNS, "split"])
            parts.append(PackedCells.from_arrow(t.filter(pc.equal(t.column("split"), "train"))))
        X = sp.vstack(
            [
                sp.csr_matrix((b.counts, b.gene_idx, b.offsets), shape=(b.n_cells, N_GENES))
                for b in parts
            ],
            format="csr",
        )
        ids = [c for b in parts for c in b.cell_id]
        obs = pd.DataFrame({"dataset": pd.Categorical([d.label] * len(ids))}, index=pd.Index(ids))
        paths.append(out / f"set{k:02d}.h5ad")
        ad.AnnData(X=X, obs=obs, var=var).write_h5ad(paths[-1])
    (out / "done").write_text("ok")
    return paths


# ---- one measurement, in its own process ------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process and all its descendants (sampled every 50 ms)."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1e9


def composition_tv(labels_per_batch: list, corpus_share: dict[str, float]) -> float:
    import numpy as np

    names = sorted(corpus_share)
    p = np.array([corpus_share[n] for n in names])
    tvs = []
    for labels in labels_per_batch[:MIX_BATCHES]:
        u, c = np.unique(np.asarray(labels), return_counts=True)
        q = dict(zip(u.tolist(), (c / c.sum()).tolist(), strict=True))
        tvs.append(0.5 * np.abs(np.array([q.get(n, 0.0) for n in names]) - p).sum())
    return float(np.mean(tvs)) if tvs else float("nan")


def run_child(name: str, args: argparse.Namespace) -> dict:
    import numpy as np

    from scfm.corpus.loader import MODEL_COLUMNS, open_corpus
    from scfm.data.packed import PackedCells

    corpus = open_corpus(args.corpus)
    shares = {
        d.label: d.n_cells_kept - d.n_cells_val for d in corpus.manifest.datasets
    }  # fmt: skip
    total = sum(shares.values())
    shares = {k: v / total for k, v in shares.items()}
    batch, limit = args.batch, args.cells_per_run
    rss = PeakRSS()
    extra: dict = {}
    labels: list = []
    t0 = time.perf_counter()
    if name.startswith("scfm shuffled"):
        from scfm.corpus.shuffled import ShuffledBatches

        sb = ShuffledBatches(
            corpus, batch, seed=0, cache=name != "scfm shuffled (no cache)", cache_dir=args.cache
        )
        paths = sb.index.paths
        for plan in _take(sb.plan(0), MIX_BATCHES):  # the exact cells of the first batches
            labels.append(np.concatenate([[paths[sb.index.shard[g]]] * r.size for g, r, _ in plan]))
        shard_label = {rec.path: d.label for d in corpus.manifest.datasets for rec in d.shards}
        labels = [np.array([shard_label[p] for p in lab]) for lab in labels]
        batches = sb.epoch(0)
    elif name == "Ray Data (previous path)":
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        extra["ray_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()  # Ray start-up reported apart
        ds = corpus.ray_dataset(split="train", columns=MODEL_COLUMNS)
        tables = ds.iter_batches(
            batch_size=batch, batch_format="pyarrow", drop_last=True,
            local_shuffle_buffer_size=8 * batch, local_shuffle_seed=0,
        )  # fmt: skip
        batches = (PackedCells.from_arrow(t) for t in tables)
    elif name == "Corpus.iter_batches":
        batches = corpus.iter_batches(batch, split="train")
    elif name == "pyarrow random row-group pairs":
        batches = _pyarrow_pairs(corpus, batch)
    else:
        raise ValueError(name)
    n = 0
    first = None
    for b in batches:
        if first is None:
            first = time.perf_counter() - t0
        if not name.startswith("scfm shuffled") and len(labels) < MIX_BATCHES:
            labels.append([c.rsplit(":", 1)[0] for c in b.cell_id])
        n += b.n_cells
        if n >= limit:
            break
    seconds = time.perf_counter() - t0
    return {
        "cells": n,
        "cells_per_s": n / seconds,
        "first_batch_s": first,
        "peak_rss_gb": rss.stop(),
        "mixing_tv": composition_tv(labels, shares),
        **extra,
    }


def _take(it, k):
    for i, x in enumerate(it):
        if i == k:
            return
        yield x


def _pyarrow_pairs(corpus, batch: int):
    """Two random row groups at a time, their training cells shuffled, cut into batches."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from scfm.corpus.loader import MODEL_COLUMNS
    from scfm.data.packed import PackedCells

    files = [pq.ParquetFile(p) for p in corpus.shard_paths]
    groups = [(f, g) for f in files for g in range(f.num_row_groups)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(groups))
    rest = None
    for i in range(0, len(order) - 1, 2):
        parts = [
            groups[j][0].read_row_group(groups[j][1], columns=[*MODEL_COLUMNS, "split"])
            for j in order[i : i + 2]
        ]
        t = pa.concat_tables(parts)
        t = t.filter(pc.equal(t.column("split"), "train")).drop_columns(["split"])
        t = t.take(pa.array(rng.permutation(t.num_rows)))
        if rest is not None:
            t = pa.concat_tables([rest, t])
        k = 0
        while k + batch <= t.num_rows:
            yield PackedCells.from_arrow(t.slice(k, batch))
            k += batch
        rest = t.slice(k)


ANNBATCH_CHILD = r"""
import json, sys, time, threading, resource
import numpy as np
try:
    import zarr, zarrs  # noqa: F401  Rust codec pipeline, as annbatch recommends
    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    pipeline = "zarrs"
except ImportError:
    pipeline = "zarr-python"
from annbatch import DatasetCollection, Loader
coll, batch, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shares = json.loads(sys.argv[4])
peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], int(open("/proc/self/statm").read().split()[1]) * 4096)
        stop.wait(0.05)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
loader = Loader(batch_size=batch, shuffle=True, drop_last=True, preload_to_gpu=False,
                rng=np.random.default_rng(0)).use_collection(DatasetCollection(coll, mode="r"))
n, first, labels = 0, None, []
for b in loader:
    if first is None:
        first = time.perf_counter() - t0
    if len(labels) < 50:
        labels.append(b["obs"]["dataset"].astype(str).tolist())
    n += b["X"].shape[0]
    if n >= limit:
        break
seconds = time.perf_counter() - t0
stop.set()
names = sorted(shares); p = np.array([shares[k] for k in names]); tv = []
for lab in labels:
    u, c = np.unique(np.asarray(lab), return_counts=True)
    q = dict(zip(u.tolist(), (c / c.sum()).tolist()))
    tv.append(0.5 * np.abs(np.array([q.get(k, 0.0) for k in names]) - p).sum())
print(json.dumps({"cells": n, "cells_per_s": n / seconds, "first_batch_s": first,
                  "peak_rss_gb": peak[0] / 1e9, "mixing_tv": float(np.mean(tv)),
                  "pipeline": pipeline}))
"""

ANNBATCH_WRITE = r"""
import sys, time, numpy as np
from annbatch import DatasetCollection
t0 = time.perf_counter()
DatasetCollection(sys.argv[1]).add_adatas(sys.argv[2:], shuffle=True, rng=np.random.default_rng(0))
print(f"{time.perf_counter() - t0:.1f}")
"""


# ---- the driver -------------------------------------------------------------------------------
def busy_cores(n: int) -> list[subprocess.Popen]:
    """``n`` processes keeping a core each busy (single-threaded float work)."""
    code = (
        "import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n    a = a @ a; a /= a.max()"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(n)]


def measure(name: str, args: argparse.Namespace, loaded: bool, annbatch: dict | None) -> dict:
    if name == "scfm shuffled (first epoch)":
        shutil.rmtree(args.cache, ignore_errors=True)
    hogs = busy_cores(os.cpu_count() or 2) if loaded else []
    try:
        time.sleep(0.5 if loaded else 0)
        if name == "annbatch":
            if annbatch is None:
                return {}
            cmd = [args.annbatch_python, "-c", ANNBATCH_CHILD, annbatch["collection"],
                   str(args.batch), str(args.cells_per_run),
                   json.dumps(annbatch["shares"])]  # fmt: skip
        else:
            cmd = [sys.executable, __file__, "--child", name, "--corpus", args.corpus,
                   "--cache", args.cache, "--batch", str(args.batch),
                   "--cells-per-run", str(args.cells_per_run)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(*dirs: Path) -> None:
    for d in dirs:
        for f in d.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass


def prepare_annbatch(args: argparse.Namespace, workdir: Path) -> dict | None:
    if not args.annbatch_python:
        return None
    from scfm.corpus.loader import open_corpus

    coll = workdir / "annbatch.zarr"
    if not (coll / "done").is_file():
        shutil.rmtree(coll, ignore_errors=True)
        paths = export_for_annbatch(Path(args.corpus), workdir / "annbatch-h5ad")
        out = subprocess.run(
            [args.annbatch_python, "-c", ANNBATCH_WRITE, str(coll), *map(str, paths)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(f"annbatch collection written in {out.stdout.strip()} s", flush=True)
        (coll / "done").write_text("ok")
    corpus = open_corpus(args.corpus)
    shares = {d.label: d.n_cells_kept - d.n_cells_val for d in corpus.manifest.datasets}
    total = sum(shares.values())
    return {"collection": str(coll), "shares": {k: v / total for k, v in shares.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="bench/loader")
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--datasets", type=int, default=20)
    p.add_argument("--nnz", type=float, default=1900, help="target nonzeros per generated cell")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--cells-per-run", type=int, default=100_000)
    p.add_argument("--annbatch-python", default="", help="a Python >= 3.12 with annbatch")
    p.add_argument("--loaders", nargs="*", default=list(LOADERS))
    p.add_argument("--conditions", nargs="*", default=["quiet", "loaded"])
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args.corpus = str(ensure_corpus(workdir, args.cells, args.datasets, args.nnz))
    args.cache = str(workdir / "cache")
    annbatch = prepare_annbatch(args, workdir)
    warm_page_cache(Path(args.corpus))
    if "scfm shuffled (cached)" in args.loaders:  # one epoch fills the cache
        measure("scfm shuffled (first epoch)", args, False, None)
        warm_page_cache(Path(args.cache))
    rows = []
    for name in args.loaders:
        row = {"loader": name}
        for cond in args.conditions:
            r = measure(name, args, cond == "loaded", annbatch)
            row[cond] = r
            if r:
                print(f"{name:32s} {cond:6s} {r['cells_per_s']:>9,.0f} cells/s  "
                      f"rss {r['peak_rss_gb']:.2f} GB  first {r['first_batch_s']:.2f} s  "
                      f"mix {r['mixing_tv']:.2f}", flush=True)  # fmt: skip
            if name == "scfm shuffled (first epoch)":
                warm_page_cache(Path(args.cache))
        rows.append(row)
    print_table(rows, args)
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r and r.get(key) is not None else "not measured"

    print(f"\n{args.cells:,} cells, batches of {args.batch}, {args.cells_per_run:,} cells per run, "
          f"{os.cpu_count()} cores; first batch from constructing the loader\n")  # fmt: skip
    print("| loader | cells/s quiet | cells/s loaded | peak RSS | first batch | mixing (TV) |")
    print("|---|---:|---:|---:|---:|---:|")
    base = next((r for r in rows if r["loader"] == "annbatch" and r.get("quiet")), None)
    for r in rows:
        q, lo = r.get("quiet", {}), r.get("loaded", {})
        first = cell(q, "first_batch_s", ".1f") + " s"
        if q.get("ray_start_s"):
            first += f" + {q['ray_start_s']:.1f} s Ray start"
        ratio = ""
        if base and q and r is not base:
            ratio = f" ({q['cells_per_s'] / base['quiet']['cells_per_s']:.2f}× annbatch)"
        print(f"| {r['loader']} | {cell(q, 'cells_per_s', ',.0f')}{ratio} | "
              f"{cell(lo, 'cells_per_s', ',.0f')} | {cell(q, 'peak_rss_gb', '.2f')} GB | {first} | "
              f"{cell(q, 'mixing_tv', '.2f')} |")  # fmt: skip


if __name__ == "__main__":
    main()
