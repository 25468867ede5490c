"""Peak memory of building a corpus from a large column-stored h5ad and a 10x ``.h5``.

    python benchmarks/corpus_memory.py --cells 200000 --nnz 60 --block-cells 10000

For each format, a fresh Python process (executor ``local``: one process, so its memory is the
worker's) builds a warm-up corpus from a tiny input (imports, vocabulary, the compiled kernel),
records its resident memory as the baseline, then builds the large input while a thread
samples the resident memory (``/proc/self/statm``, every 5 ms) for the peak. Prints one JSON
line per format: cells, nonzeros, matrix bytes, baseline, peak, growth
(peak - baseline) in MB, and seconds. The inputs are synthetic: ``--nnz`` distinct genes per
cell among the first 2,000 vocabulary genes, counts 1..5, written once under ``--dir``.

The test ``tests/corpus/test_memory.py`` runs it at 200,000 cells and bounds the growth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

N_GENES = 2_000


def _csr(n_cells: int, nnz: int, seed: int = 0):
    """cells × N_GENES CSR with ``nnz`` distinct genes per cell (sorted), counts 1..5."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.random((n_cells, N_GENES)).argpartition(nnz, axis=1)[:, :nnz], axis=1)
    data = rng.integers(1, 6, n_cells * nnz).astype(np.float32)
    indptr = np.arange(0, (n_cells + 1) * nnz, nnz, dtype=np.int64)
    return data, idx.ravel().astype(np.int32), indptr


def _chunks(n_cells: int, nnz: int, step: int = 20_000):
    for s in range(0, n_cells, step):
        yield s, _csr(min(step, n_cells - s), nnz, seed=s)


def write_inputs(folder: Path, n_cells: int, nnz: int) -> dict[str, Path]:
    """A CSC h5ad and a 10x v3 ``.h5`` of the same synthetic cells (written in chunks)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    from scfm.data.genes import GeneVocab

    folder.mkdir(parents=True, exist_ok=True)
    genes = np.asarray(GeneVocab.load().names[:N_GENES])
    barcodes = np.array([f"c{i:07d}" for i in range(n_cells)])
    out = {
        "csc_h5ad": folder / f"csc-{n_cells}-{nnz}.h5ad",
        "tenx_h5": folder / f"tenx-{n_cells}-{nnz}.h5",
    }
    if not out["tenx_h5"].exists():
        tmp = out["tenx_h5"].with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            g = f.create_group("matrix")
            total = n_cells * nnz
            d = g.create_dataset("data", (total,), "i4")
            ix = g.create_dataset("indices", (total,), "i8")
            g["indptr"] = np.arange(0, (n_cells + 1) * nnz, nnz, dtype=np.int64)
            g["shape"] = np.array([N_GENES, n_cells], dtype=np.int32)
            g["barcodes"] = barcodes.astype("S")
            feats = g.create_group("features")
            feats["id"] = genes.astype("S")
            feats["name"] = genes.astype("S")
            feats["feature_type"] = np.full(N_GENES, b"Gene Expression")
            feats["genome"] = np.full(N_GENES, b"GRCh38")
            for s, (data, indices, _) in _chunks(n_cells, nnz):
                d[s * nnz : s * nnz + len(data)] = data.astype(np.int32)
                ix[s * nnz : s * nnz + len(indices)] = indices
        tmp.replace(out["tenx_h5"])
    if not out["csc_h5ad"].exists():
        parts = [
            sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, N_GENES))
            for _, (data, indices, indptr) in _chunks(n_cells, nnz)
        ]
        X = sp.vstack(parts).tocsc()
        del parts
        adata = ad.AnnData(X=X, obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=genes))
        tmp = out["csc_h5ad"].with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.replace(out["csc_h5ad"])
    return out


_CHILD = """
import json, sys, tempfile, threading, time
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import H5ADSource, TenXSource
kind, big, small, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
Source = H5ADSource if kind == "csc_h5ad" else TenXSource
def build(path, out):
    cfg = BuildConfig(output=out, sources=[Source(paths=[path])], qc=QCConfig(min_genes=10),
                      block_cells=block, executor="local", mlflow=False, progress=False)
    return build_corpus(cfg).manifest.totals
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
peak, stop = [0.0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
with tempfile.TemporaryDirectory() as d:
    build(small, d + "/warm")
    base = rss()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    totals = build(big, d + "/big")
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    print(json.dumps({"baseline_mb": round(base, 1), "peak_mb": round(peak[0], 1),
                      "seconds": round(seconds, 1), "cells_in": totals["n_cells_in"],
                      "cells_kept": totals["n_cells_kept"]}))
"""


def measure(kind: str, big: Path, small: Path, block_cells: int) -> dict:
    """Run one build in a fresh process; its baseline and peak RSS (MB)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(big), str(small), str(block_cells)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["growth_mb"] = round(res["peak_mb"] - res["baseline_mb"], 1)
    return res


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--nnz", type=int, default=60, help="nonzero genes per cell")
    ap.add_argument("--block-cells", type=int, default=10_000)
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "scfm-bench-memory"))
    ap.add_argument("--formats", nargs="+", default=["csc_h5ad", "tenx_h5"])
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    big = write_inputs(folder, args.cells, args.nnz)
    small = write_inputs(folder, 2 * args.block_cells // 10 or 200, args.nnz)
    rows = []
    for kind in args.formats:
        res = measure(kind, big[kind], small[kind], args.block_cells)
        row = {"format": kind, "cells": args.cells, "nnz_per_cell": args.nnz,
               "matrix_mb": round(args.cells * args.nnz * 8 / 2**20, 1),
               "block_cells": args.block_cells, **res}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
