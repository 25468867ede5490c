"""Cell-embedding speed: scfm batched inference vs the official one-cell-at-a-time loop.

Both paths start from the same cells mapped onto the 19,264-gene vocabulary (a cells × 19,264
CSR of raw counts) and end with concat[S, T, max, mean] embeddings in numpy, with the same
weights:

* **scfm**: ``scfm.inference.embed_csr``: cells sorted by length into batches (``--batch-size``
  cells, at most ``--max-tokens`` padded tokens), only nonzero genes packed into the encoder,
  ``torch.inference_mode``, SDPA attention, bf16 autocast on CUDA.
* **official**: the loop of scFoundation's ``model/get_embedding.py`` (``OFFICIAL_CHECKPOINT.md``
  §6): per cell, a dense 19,266-long row (all genes padded with zeros, + T, S), normalised in
  numpy, moved to the device, ``gatherData`` (the top-k trick that selects the nonzero entries
  in column order), value + gene embedding, encoder, pooling, ``.cpu().numpy()``; fp32, batch 1.
  Re-implemented here from that description on the scfm modules (the official code is not a
  dependency, and it has no CPU path). The official encoder, too, sees only the nonzero genes:
  the dense row is the input format, not the encoder length. Run with the faster of torch's two
  attention paths on CPU (SDPA), as scfm, so the ratio measures batching and overheads only.
* **dense**: one cell at a time with *every* gene's value in the encoder (19,266 tokens, zeros
  included; no packing): what "unpacked, padded to all genes" costs. Few cells (it is slow); its
  embeddings differ by construction (zeros are tokens), so only its speed is compared.

Every measurement runs in a fresh subprocess (clean peak memory: on CPU the growth of the peak
resident set during the timed loop; on CUDA ``torch.cuda.max_memory_allocated``). The script
also checks that scfm and the official loop give the same embeddings (max |difference|).
``--threads`` (default 1) sets torch's intra-op threads: on a shared box, OpenMP threads that
wait for a busy core made single-cell forwards up to 8× slower at 2 threads than at 1.

    python benchmarks/inference_speed.py                    # tiny, 3m, 10m on CPU, Kang cells
    python benchmarks/inference_speed.py --device cuda      # 100m on GPU (bf16) + official loop
    python benchmarks/inference_speed.py --device cuda --synthetic-nnz 1000   # design target

Targets (issue 7): ≥ 10× the official loop on CPU; ≥ 1,000 cells/s for 100m on one GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import fresh_process  # noqa: E402  (benchmarks/, the script's own folder)

OFFICIAL_CELLS_PER_S_H100 = 39  # DESIGN.md: official get_embedding.py, 0.1B, one H100, fp32


# ----------------------------------------------------------------------------------- inputs
def load_cells(args: dict):
    """``(X, totals)``: vocabulary CSR counts and each cell's total (vocabulary genes)."""
    import scipy.sparse as sp

    from scfm.data.genes import N_GENES

    if args.get("synthetic_nnz"):
        rng = np.random.default_rng(0)
        n, k = args["synthetic_n"], args["synthetic_nnz"]
        indptr = np.arange(n + 1) * k
        indices = np.concatenate([np.sort(rng.choice(N_GENES, k, replace=False)) for _ in range(n)])
        data = (1 + rng.negative_binomial(1, 0.4, size=n * k)).astype(np.float32)
        X = sp.csr_matrix((data, indices, indptr), shape=(n, N_GENES))
    else:
        from scfm import datasets
        from scfm.data.genes import GeneVocab
        from scfm.data.io import read_counts

        adata = read_counts(datasets.fetch("kang2018"))
        X = GeneVocab.load().map(adata.var_names).apply(adata.X).astype(np.float32)
    # the official script normalises by the sum over the vocabulary genes; so do both paths here
    return sp.csr_matrix(X), np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def subsets(n_cells: int, n_scfm: int, n_official: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random cells for scfm, and the first ``n_official`` of them for the baseline."""
    order = np.random.default_rng(1).permutation(n_cells)
    return np.sort(order[:n_scfm]), np.sort(order[: min(n_official, n_scfm)])


# ------------------------------------------------------------------------- official baseline
def gather_data(data, labels, pad_token_id: int):
    """The official ``gatherData``: nonzero entries first, in column order, padded with 103."""
    import torch

    value_nums = labels.sum(1)
    max_num = int(value_nums.max())
    fake_data = torch.full((data.shape[0], max_num), pad_token_id, device=data.device)
    data = torch.hstack([data, fake_data.to(data.dtype)])
    fake_label = torch.full((labels.shape[0], max_num), 1, device=labels.device)
    none_labels = ~labels
    labels = labels.float()
    labels[none_labels] = torch.tensor(-float("inf"), device=labels.device)
    # (the official code builds this offset list in Python for every call, as here)
    tmp_data = torch.tensor(
        [(i + 1) * 20000 for i in range(labels.shape[1], 0, -1)], device=labels.device
    )
    labels += tmp_data
    labels = torch.hstack([labels, fake_label])
    idx = labels.topk(max_num).indices
    new_data = torch.gather(data, 1, idx)
    return new_data, new_data == pad_token_id


def official_embed(model, X, totals, device) -> np.ndarray:
    """One cell per forward, as ``get_embedding.py --output_type cell --tgthighres f1``."""
    import torch

    from scfm.model.config import N_POS
    from scfm.runtime import mha_fastpath

    out = []
    gene_ids = torch.arange(N_POS, device=device).unsqueeze(0)
    with torch.no_grad(), mha_fastpath(False):
        for i in range(X.shape[0]):
            row = X[i].toarray().ravel()  # the official script holds a dense DataFrame row
            total = totals[i]
            tmpdata = np.log1p(row / total * 1e4).tolist()
            S = float(np.log10(total))
            x = torch.tensor(tmpdata + [S, S]).unsqueeze(0).to(device)  # T (f1) = S
            labels = x > 0
            values, padding = gather_data(x, labels, 103)
            pos, _ = gather_data(gene_ids, labels, 103)
            h = model.token_emb(values.float()) + model.pos_emb(pos)
            h = model.encoder(h, padding)
            emb = torch.cat(
                [h[:, -1], h[:, -2], h[:, :-2].max(dim=1).values, h[:, :-2].mean(dim=1)], dim=1
            )
            out.append(emb.detach().cpu().numpy())
    return np.concatenate(out)


def dense_embed(model, X, totals, device) -> np.ndarray:
    """One cell per forward with all 19,266 positions in the encoder (no packing)."""
    import torch

    from scfm.model.config import N_GENES, N_POS
    from scfm.runtime import mha_fastpath

    out = []
    ids = torch.arange(N_POS, device=device).unsqueeze(0)
    no_pad = torch.zeros(1, N_POS, dtype=torch.bool, device=device)
    with torch.inference_mode(), mha_fastpath(False):
        for i in range(X.shape[0]):
            row = np.log1p(X[i].toarray().ravel() / totals[i] * 1e4)
            S = float(np.log10(totals[i]))
            x = torch.tensor(np.concatenate([row, [S, S]]), dtype=torch.float32, device=device)
            h = model.encoder(model.token_emb(x[None]) + model.pos_emb(ids), no_pad)
            genes = h[:, :N_GENES]
            emb = torch.cat([h[:, -1], h[:, -2], genes.max(1).values, genes.mean(1)], dim=1)
            out.append(emb.cpu().numpy())
    return np.concatenate(out)


# ------------------------------------------------------------------------------------ worker
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(job: dict) -> dict:
    """One measurement in its own process."""
    import torch

    from scfm.inference.embed import embed_csr
    from scfm.inference.engine import InferenceEngine
    from scfm.model import ModelConfig, XTrimoGene

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    X, totals = load_cells(job)
    scfm_rows, official_rows = subsets(X.shape[0], job["n_scfm"], job["n_official"])
    rows = {
        "scfm": scfm_rows,
        "official": official_rows,
        "dense": official_rows[: job["n_dense"]],
    }[job["path"]]
    Xs, ts = X[rows], totals[rows]
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name(job["preset"])).to(device).eval()
    engine = InferenceEngine(model, device=device, precision=job["precision"])

    def run(Xr, tr):
        if job["path"] == "scfm":
            return embed_csr(
                engine, Xr, tr, batch_size=job["batch_size"], max_tokens=job["max_tokens"]
            )
        if job["path"] == "dense":
            return dense_embed(model, Xr, tr, device)
        return official_embed(model, Xr, tr, device)

    n_warm = 1 if job["path"] == "dense" else min(8, Xs.shape[0])
    if job["path"] != "dense" or device.type == "cuda":  # a dense CPU warm-up costs a minute
        run(Xs[:n_warm], ts[:n_warm])  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    emb = run(Xs, ts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    # embeddings of the baseline's cells, for the agreement check
    pos = np.searchsorted(rows, official_rows) if job["path"] != "dense" else np.arange(0)
    return {
        "cells": int(rows.size),
        "seconds": seconds,
        "cells_per_s": rows.size / seconds,
        "mean_nnz": float(np.diff(Xs.indptr).mean()),
        "peak_bytes": int(max(peak, 0)),
        "params": sum(p.numel() for p in model.parameters()),
        "check": emb[pos].tolist() if job["return_check"] else None,
    }


def measure(job: dict) -> dict:
    """Run :func:`run_worker` in a fresh interpreter and return its result."""
    return fresh_process.measure(__file__, job)


# -------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--presets", nargs="+", help="default: tiny 3m 10m on CPU, 100m on CUDA")
    p.add_argument("--cells", type=int, help="cells for scfm (cpu: 1,975 tiny/3m, 512 10m)")
    p.add_argument("--official-cells", type=int, help="cells for the official loop (cpu: 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=None, help="padded tokens per batch")
    p.add_argument("--precision", default="auto", help="scfm: auto (bf16 on CUDA), fp32, bf16")
    p.add_argument("--synthetic-nnz", type=int, help="synthetic cells with this many genes")
    p.add_argument("--synthetic-n", type=int, default=4096)
    p.add_argument("--dense-cells", type=int, help="cells for the dense baseline (2; 10m: 1)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", type=Path, help="also write the results here")
    fresh_process.add_worker_option(p)
    args = p.parse_args()
    if fresh_process.serve_worker(args, run_worker):
        return

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here")
    presets = args.presets or (["100m"] if cuda else ["tiny", "3m", "10m"])
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, shared)"
    data = f"synthetic, {args.synthetic_nnz} genes/cell" if args.synthetic_nnz else "Kang PBMC"
    print(
        f"# inference_speed  {dt.date.today()}  {device_name}  torch {torch.__version__}  "
        f"{platform.machine()}  threads {args.threads}  cells: {data}",
        flush=True,
    )
    rows = []
    for name in presets:
        n_scfm = args.cells or (8192 if cuda else (512 if name == "10m" else 1975))
        n_off = args.official_cells or (256 if cuda else (32 if name == "10m" else 64))
        n_dense = args.dense_cells or (1 if name in ("10m", "100m") else 2)
        common = {
            "threads": args.threads,
            "n_dense": n_dense,
            "device": args.device,
            "preset": name,
            "n_scfm": n_scfm,
            "n_official": n_off,
            "batch_size": args.batch_size,
            "max_tokens": args.max_tokens,
            "precision": args.precision,
            "synthetic_nnz": args.synthetic_nnz,
            "synthetic_n": args.synthetic_n,
            "return_check": True,
        }
        ours = measure({**common, "path": "scfm"})
        print(f"  {name} scfm:     {ours['cells_per_s']:8.1f} cells/s", flush=True)
        base = measure({**common, "path": "official"})
        print(f"  {name} official: {base['cells_per_s']:8.1f} cells/s", flush=True)
        diff = float(np.abs(np.array(ours.pop("check")) - np.array(base.pop("check"))).max())
        row = {
            "preset": name,
            "scfm": ours,
            "official": base,
            "max_abs_diff": diff,
            "speedup": ours["cells_per_s"] / base["cells_per_s"],
        }
        if not args.no_dense:
            dense = measure({**common, "path": "dense", "return_check": False})
            dense.pop("check")
            print(f"  {name} dense:    {dense['cells_per_s']:8.3f} cells/s", flush=True)
            row["dense"] = dense
            row["speedup_dense"] = ours["cells_per_s"] / dense["cells_per_s"]
        rows.append(row)

    print("\n## Cell embeddings: scfm batched vs one cell at a time\n")
    print(
        "| preset | path | params | cells | mean nnz | encoder tokens | cells/s | peak mem (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for path in ("scfm", "official", "dense"):
            if path not in r:
                continue
            m = r[path]
            tokens = "19,266" if path == "dense" else f"{m['mean_nnz'] + 2:.0f}"
            print(
                f"| {r['preset']} | {path} | {m['params'] / 1e6:.2f}M | {m['cells']:,} "
                f"| {m['mean_nnz']:.0f} | {tokens} | {m['cells_per_s']:,.2f} "
                f"| {m['peak_bytes'] / 2**20:,.0f} |"
            )
    print()
    for r in rows:
        line = (
            f"{r['preset']}: scfm {r['speedup']:.1f}x the official loop "
            f"({'meets' if r['speedup'] >= 10 else 'below'} 10x; embeddings agree to "
            f"{r['max_abs_diff']:.1e})"
        )
        if "speedup_dense" in r:
            line += (
                f", {r['speedup_dense']:,.0f}x the dense one-cell baseline "
                f"({'meets' if r['speedup_dense'] >= 10 else 'MISSES'} the 10x target)"
            )
        if cuda and r["preset"] == "100m":
            cps = r["scfm"]["cells_per_s"]
            line += (
                f"; {cps:,.0f} cells/s = {cps / OFFICIAL_CELLS_PER_S_H100:.0f}x the official "
                f"release's {OFFICIAL_CELLS_PER_S_H100} cells/s on an H100 "
                f"({'meets' if cps >= 1000 else 'MISSES'} the 1,000 cells/s target)"
            )
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str) + "\n"
        )


if __name__ == "__main__":
    main()
