"""Training-step speed and memory: asymmetric xTrimoGene vs a dense transformer.

The dense baseline is the encoder of the same preset (same width, depth, heads, FFN; exact
attention through ``scaled_dot_product_attention``) run over all 19,266 positions, with the same
value / gene embeddings, the same per-gene head and the same masked-MSE loss on the same RDA
batches. Cells have realistic sparsity (~10 % of the vocabulary expressed, negative-binomial
counts), so after down-sampling and masking the encoder sees a few hundred to ~1,000 tokens.

A training step is forward + loss + backward + AdamW step. Every measurement runs in a fresh
subprocess, so peak memory is clean: on CPU the peak resident set during the steps minus the
resident set just before them; on CUDA ``torch.cuda.max_memory_allocated``. A second table gives
the activation memory the Performer decoder keeps for backward at growing sequence lengths
(saved tensors, parameters excluded), to show it grows linearly.

    python benchmarks/model_speed.py            # 3m and 10m on CPU (~4-5 min on 2 cores)
    python benchmarks/model_speed.py --quick    # 3m only, fewer steps (~1-2 min)
    python benchmarks/model_speed.py            # on a CUDA machine: also 100m, bf16

Targets (issue): asymmetric ≥ 10× faster per cell than dense; decoder memory linear in length.
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
import weakref
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import fresh_process  # noqa: E402  (benchmarks/, the script's own folder)

from scfm.data.packed import PackedCells  # noqa: E402
from scfm.model.config import N_GENES, N_POS, ModelConfig  # noqa: E402
from scfm.model.embedding import AutoDiscretization, gene_embedding  # noqa: E402
from scfm.model.encoder import Encoder  # noqa: E402
from scfm.model.packing import scatter_to_positions  # noqa: E402
from scfm.model.rda import CellBatch, RDAConfig, collate, masked_mse  # noqa: E402
from scfm.model.xtrimogene import XTrimoGene  # noqa: E402


# ----------------------------------------------------------------------------------- baseline
class DenseTransformer(nn.Module):
    """The preset's encoder applied to all 19,266 positions (no sparsity), plus the same head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.token_emb = AutoDiscretization(cfg.enc_dim, cfg.n_bins, cfg.bin_alpha)
        self.pos_emb = gene_embedding(cfg.enc_dim)
        self.encoder = Encoder(cfg)
        self.to_final = nn.Linear(cfg.enc_dim, 1)

    def forward(self, values: Tensor, masked: Tensor) -> Tensor:
        """``(B, 19266)`` values (zeros included), ``(B, 19266)`` mask → ``(B, 19264)``."""
        x = self.token_emb(values, mask=masked) + self.pos_emb.weight[:N_POS]  # (B, N, E)
        no_pad = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
        h = self.encoder(x, no_pad)
        return self.to_final(h).squeeze(-1)[:, :N_GENES]


def dense_inputs(b: CellBatch) -> tuple[Tensor, Tensor]:
    """Full-length values and mask from a packed batch (the same information, un-sparsified)."""
    B = b.batch_size
    base = torch.zeros(B, N_POS, 1, device=b.values.device)
    values = scatter_to_positions(b.values.unsqueeze(-1), b.gene_ids, b.padding_mask, base)
    masked = torch.nn.functional.pad(b.masked, (0, N_POS - N_GENES))
    return values.squeeze(-1), masked


# --------------------------------------------------------------------------------------- data
def synthetic_cells(n_cells: int, seed: int, frac_nonzero: float = 0.1) -> PackedCells:
    """Loader-format batch: ~10 % of genes expressed, counts 1 + NegBin (mean ≈ 3.5)."""
    rng = np.random.default_rng(seed)
    gene_idx, counts, offsets, totals = [], [], [0], []
    for _ in range(n_cells):
        n = int(rng.normal(frac_nonzero, 0.01) * N_GENES)
        genes = np.sort(rng.choice(N_GENES, size=n, replace=False)).astype(np.int32)
        c = (1 + rng.negative_binomial(1.0, 0.4, size=n)).astype(np.float32)
        gene_idx.append(genes)
        counts.append(c)
        offsets.append(offsets[-1] + n)
        totals.append(float(c.sum()) * 1.1)
    return PackedCells(
        gene_idx=np.concatenate(gene_idx),
        counts=np.concatenate(counts),
        offsets=np.asarray(offsets, dtype=np.int64),
        total_counts=np.asarray(totals),
    )


# ------------------------------------------------------------------------------------- worker
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(job: dict) -> dict:
    """One measurement (in its own process): build, warm up, time ``steps`` training steps."""
    torch.manual_seed(0)
    device = torch.device(job["device"])
    cfg = ModelConfig.from_name(job["preset"], dropout=0.0)  # dropout off: same work every step
    kind = job["model"]
    model = (XTrimoGene(cfg) if kind == "asymmetric" else DenseTransformer(cfg)).to(device)
    model.train()
    step_fn = torch.compile(model) if job["compile"] else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batches = [
        collate(synthetic_cells(job["batch"], seed=s), RDAConfig(), generator=s).to(device)
        for s in range(job["warmup"] + job["steps"])
    ]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if job["bf16"] else nullcontext()

    def step(b: CellBatch) -> float:
        with autocast:
            if kind == "asymmetric":
                pred = step_fn(*b.encoder_inputs(), b.masked)
            else:
                pred = step_fn(*dense_inputs(b))
            loss = masked_mse(pred, b.target, b.masked)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for b in batches[: job["warmup"]]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        mem_base = torch.cuda.memory_allocated()
    rss_before = _rss_bytes()
    times = []
    for b in batches[job["warmup"] :]:
        t0 = time.perf_counter()
        step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - mem_base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    enc_len = float(np.mean([(~b.padding_mask).sum(1).float().mean().item() for b in batches]))
    return {
        "step_s": float(np.mean(times)),
        "peak_bytes": int(max(peak, 0)),
        "enc_tokens": enc_len,
        "params": sum(p.numel() for p in model.parameters()),
    }


def measure(job: dict) -> dict:
    """Run :func:`run_worker` in a fresh interpreter and return its result."""
    return fresh_process.measure(__file__, job)


# --------------------------------------------------------------------- decoder memory scaling
def decoder_activation_bytes(cfg: ModelConfig, n_positions: int, device: torch.device) -> int:
    """Bytes the decoder keeps alive for backward at sequence length N (parameters excluded).

    Counts the storages of tensors saved by autograd that are still referenced once the forward
    has finished (transients freed during the forward are not activation memory).
    """
    torch.manual_seed(0)
    model = XTrimoGene(cfg).to(device).train()
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[weakref.ref] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(weakref.ref(t))
        return t

    x = torch.randn(1, n_positions, cfg.dec_dim, device=device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.decoder(x)
    alive: dict[int, int] = {}
    for ref in saved:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in param_ptrs:
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del out
    return sum(alive.values())


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3m only, fewest steps")
    p.add_argument("--presets", nargs="+", help="default: 3m 10m (+ 100m on CUDA)")
    p.add_argument("--batch", type=int, help="asymmetric cells per step (cpu 4, cuda 8)")
    p.add_argument("--steps", type=int, help="measured asymmetric steps (default 2)")
    p.add_argument("--dense-batch", type=int, default=1)
    p.add_argument("--dense-steps", type=int, default=1, help="measured dense steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA, off for CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--json", type=Path, help="also write the results here")
    fresh_process.add_worker_option(p)
    args = p.parse_args()
    if fresh_process.serve_worker(args, run_worker):
        return

    cuda = args.device.startswith("cuda")
    presets = args.presets or (["3m"] if args.quick else ["3m", "10m"] + (["100m"] if cuda else []))
    batch = args.batch or (8 if cuda else (2 if args.quick else 4))
    steps = args.steps or (1 if args.quick else 2)
    bf16 = cuda if args.bf16 is None else args.bf16
    common = {"device": args.device, "bf16": bf16, "compile": args.compile}
    threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {threads} threads"
    print(
        f"# model_speed  {dt.date.today()}  {device_name}  torch {torch.__version__}  "
        f"{platform.machine()}  precision {'bf16' if bf16 else 'fp32'}",
        flush=True,
    )

    rows = []
    for name in presets:
        asym = measure(
            {
                **common,
                "preset": name,
                "model": "asymmetric",
                "batch": batch,
                "warmup": 1,
                "steps": steps,
            }
        )
        print(f"  {name} asymmetric: {asym['step_s']:.2f} s/step", flush=True)
        dense = measure(
            {
                **common,
                "preset": name,
                "model": "dense",
                "batch": args.dense_batch,
                "warmup": 1 if cuda else 0,
                "steps": args.dense_steps,
            }
        )
        print(f"  {name} dense:      {dense['step_s']:.2f} s/step", flush=True)
        a_cell = asym["step_s"] / batch
        d_cell = dense["step_s"] / args.dense_batch
        rows.append(
            {
                "preset": name,
                "asym": asym,
                "dense": dense,
                "asym_batch": batch,
                "dense_batch": args.dense_batch,
                "speedup_per_cell": d_cell / a_cell,
            }
        )

    print("\n## Training step: asymmetric (encoder on expressed genes) vs dense (all 19,266)\n")
    print(
        "| preset | model | params | cells/step | enc tokens/cell | s/step | cells/s "
        "| s/cell | peak mem (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for kind, n in (("asym", r["asym_batch"]), ("dense", r["dense_batch"])):
            m = r[kind]
            tokens = f"{m['enc_tokens']:.0f}" if kind == "asym" else f"{N_POS:,}"
            print(
                f"| {r['preset']} | {'asymmetric' if kind == 'asym' else 'dense'} "
                f"| {m['params'] / 1e6:.2f}M | {n} | {tokens} | {m['step_s']:.2f} "
                f"| {n / m['step_s']:.2f} | {m['step_s'] / n:.2f} "
                f"| {m['peak_bytes'] / 2**20:,.0f} |"
            )
    print()
    for r in rows:
        a_mem = r["asym"]["peak_bytes"] / r["asym_batch"]
        d_mem = r["dense"]["peak_bytes"] / r["dense_batch"]
        verdict = "meets" if r["speedup_per_cell"] >= 10 else "MISSES"
        print(
            f"{r['preset']}: asymmetric is {r['speedup_per_cell']:.1f}x faster per cell than "
            f"dense ({verdict} the 10x target); peak memory per cell {a_mem / 2**20:,.0f} vs "
            f"{d_mem / 2**20:,.0f} MiB"
        )

    print("\n## Performer decoder: activation memory saved for backward, one cell\n")
    lengths = [N_POS // 8, N_POS // 4, N_POS // 2, N_POS]
    print("| preset | " + " | ".join(f"N={n:,}" for n in lengths) + " | MiB per 1k positions |")
    print("|---|" + "---:|" * (len(lengths) + 1))
    scaling = {}
    for name in presets:
        cfg = ModelConfig.from_name(name)
        mib = [decoder_activation_bytes(cfg, n, torch.device(args.device)) / 2**20 for n in lengths]
        per_k = [m / n * 1000 for m, n in zip(mib, lengths, strict=True)]
        scaling[name] = dict(zip(map(str, lengths), mib, strict=True))
        print(
            f"| {name} | "
            + " | ".join(f"{m:,.1f}" for m in mib)
            + f" | {min(per_k):.2f}-{max(per_k):.2f} |"
        )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "decoder_scaling_mib": scaling,
                    "device": device_name,
                    "date": str(dt.date.today()),
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
