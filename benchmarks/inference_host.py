"""Host-side inference throughput: can one process prepare cells as fast as a GPU embeds them?

Everything ``scfm.embed`` does on the host, without the model: validation of the counts, gene
mapping onto the vocabulary, block reads, length-sorted batching, normalization and packing into
model tensors (``InferenceEngine.host_batch``). Cells: synthetic raw counts resampled from real
Kang PBMCs (``benchmarks/synthetic.py``) at ~1,000 nonzero genes per cell, gene symbols as
``var_names``, in memory. Target (issue 15): ≥ 5,000 cells/s per process, so that host work,
overlapped with device compute by ``InferenceEngine.embed_stream``, never starves a GPU running
the 100m model at ~2,000 cells/s.

It also embeds the same cells with the tiny model twice, through ``embed_stream`` (host work in
a background thread) and through a plain loop (prepare, then compute, batch after batch), and
prints the ratio: on a CPU both compete for the same cores, so the gain here is small; on a GPU
the host work hides behind device compute.

    python benchmarks/inference_host.py [--cells 20000] [--nnz 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_cells(n_cells: int, nnz: float):
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from benchmarks import synthetic

    pool = synthetic.load_pool()
    k, p = synthetic.calibrate(pool, nnz)
    parts = list(synthetic.synthetic_chunks(pool, n_cells, k=k, p=p, chunk_cells=5000))
    X = sp.vstack([x for x, _ in parts], format="csr").astype(np.float32)
    obs = pd.DataFrame(index=pd.Index([f"c{i}" for i in range(n_cells)]))
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(pool.feature_names)))


def host_only(adata, engine, batch_size: int) -> tuple[float, int]:
    """Seconds and nonzeros of preparing every batch's model tensors, no model."""
    from scfm.data.prepared import prepare
    from scfm.inference.batching import length_sorted_batches

    t0 = time.perf_counter()
    prepared = prepare(adata)
    nnz = 0
    for block in prepared.blocks("all_genes"):
        for rows in length_sorted_batches(block.lengths(), batch_size, None):
            cells = engine.host_batch(block.batch(rows))
            nnz += int((~cells.padding_mask).sum())
    return time.perf_counter() - t0, nnz


def plain_loop(adata, engine, batch_size: int) -> float:
    """Seconds to embed batch after batch: host preparation, then the model, no overlap."""
    from scfm.data.prepared import prepare
    from scfm.inference.batching import length_sorted_batches

    t0 = time.perf_counter()
    for block in prepare(adata).blocks("all_genes"):
        for rows in length_sorted_batches(block.lengths(), batch_size, None):
            engine.embed(block.batch(rows))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--nnz", type=float, default=1000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--model-cells", type=int, default=2_000, help="cells for the tiny model")
    args = ap.parse_args()
    import torch

    import scfm
    from scfm.inference.engine import InferenceEngine
    from scfm.model.config import ModelConfig
    from scfm.model.xtrimogene import XTrimoGene

    torch.set_num_threads(args.threads)
    adata = make_cells(args.cells, args.nnz)
    engine = InferenceEngine(XTrimoGene(ModelConfig.from_name("tiny")), device="cpu")
    host_only(adata[:500].copy(), engine, args.batch_size)  # warm-up (imports, caches)
    seconds, tokens = host_only(adata, engine, args.batch_size)
    rate = args.cells / seconds
    print(f"host preparation: {args.cells:,} cells, {tokens / args.cells:,.0f} tokens/cell, "
          f"{seconds:.2f} s -> {rate:,.0f} cells/s per process "
          f"({'meets' if rate >= 5000 else 'misses'} the 5,000 cells/s target)")  # fmt: skip
    small = adata[: args.model_cells].copy()
    t0 = time.perf_counter()
    scfm.embed(
        small, engine.model, batch_size=args.batch_size, device="cpu", progress=False, max_tokens=0
    )
    streamed = time.perf_counter() - t0
    plain = plain_loop(small, engine, args.batch_size)
    print(f"tiny model on CPU, {args.model_cells:,} cells: embed (background host work) "
          f"{args.model_cells / streamed:,.0f} cells/s, plain loop {args.model_cells / plain:,.0f} "
          f"cells/s ({plain / streamed:.2f}×)")  # fmt: skip


if __name__ == "__main__":
    main()
