"""Driver memory and time of planning a Census build (``CensusSource.datasets()`` + ``plan()``).

Planning reads the obs of every selected cell (``soma_joinid``, ``dataset_id``) to count cells
per data set and cut each into blocks. This benchmark writes Census-shaped SOMA stores of
synthetic cells (few nonzero genes per cell: only obs matters here; 100,000 cells per data set,
as Census's large data sets) and measures, in a fresh process per size, the peak RSS added by
planning (``VmHWM`` after minus ``VmRSS`` before: C++ allocations of tiledbsoma count too) and
its wall time, then fits memory = a + b · cells and gives the slope between the two largest
sizes (the marginal cost of more cells).

    python benchmarks/census_planning.py --sizes 100000 300000 1000000

Stores are kept in ``--workdir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(store: str, block_cells: int) -> dict:
    """Plan a build of ``store`` in this process; peak RSS added and seconds."""
    import gc

    from scfm.corpus.sources import CensusSource

    source = CensusSource(uri=store)
    source._open()  # opening the store is not planning: its handles are there before
    gc.collect()
    # reset the high-water mark (Linux: writing 5 to clear_refs resets VmHWM to VmRSS)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    refs = source.datasets()
    units = [u for r in refs for u in source.plan(r, block_cells)]
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {
        "cells": sum(int(r.n_cells or 0) for r in refs),
        "datasets": len(refs),
        "units": len(units),
        "seconds": round(seconds, 2),
        "peak_added_mb": round((peak - before) / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--block-cells", type=int, default=20_000)
    p.add_argument("--workdir", default="results/bench/census_planning")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: one store
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.block_cells)))
        return
    sys.path.insert(0, str(BENCH))
    import synthetic

    logging.basicConfig(level=logging.WARNING)
    rows = []
    for n in args.sizes:
        store = Path(args.workdir) / f"soma-{n}"
        if not store.exists():
            t0 = time.perf_counter()
            synthetic.write_census_store(store, n, target_nnz=20, cells_per_dataset=100_000)
            print(f"generated {n:,} cells in {time.perf_counter() - t0:.0f} s", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(store), "--block-cells",
             str(args.block_cells)],
            capture_output=True, text=True, check=True, env=os.environ,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) >= 2:
        import numpy as np

        x = np.array([r["cells"] for r in rows], float)
        y = np.array([r["peak_added_mb"] for r in rows], float)
        b, a = np.polyfit(x, y, 1)
        slope = (y[-1] - y[-2]) / (x[-1] - x[-2]) * 1e6
        at_50m = y[-1] + slope * (50e6 - x[-1]) / 1e6
        print(
            f"fit over all sizes: peak_added_mb = {a:.1f} + {b * 1e6:.2f} per million cells "
            f"(50M cells → {a + b * 50e6:,.0f} MB); between the two largest: "
            f"{slope:.2f} MB per million cells (50M cells → {at_50m:,.0f} MB)"
        )


if __name__ == "__main__":
    main()
