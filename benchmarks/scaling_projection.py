"""Projected time and cost of the 50M-cell corpus build and of pretraining each preset at scale.

Inputs are measured numbers (quoted with their source) and stated assumptions (prices, MFU),
all overridable; outputs are the tables of docs/SCALING.md. GPU figures are projections from
the model's FLOPs per cell (``scfm.model.flops``) at a stated MFU: no GPU run has measured them.

    python benchmarks/scaling_projection.py
    python benchmarks/scaling_projection.py --mfu 0.10 --gpu-hour-usd 2.5
"""

from __future__ import annotations

import argparse
import math

from scfm.model.config import ModelConfig
from scfm.model.flops import PEAK_BF16_FLOPS, train_flops_per_cell
from scfm.model.params import parameter_counts
from scfm.train.config import PretrainConfig

# Measured on the 2-core CPU box (docs/corpus.md, benchmarks/corpus_throughput.py, 1M cells at
# ~2,000 nonzeros): Ray wall clock per core, Census-shaped SOMA input / h5ad input.
CORPUS_CELLS_PER_CORE = {"soma": 3_024.0, "h5ad": 4_987.0}
PARQUET_BYTES_PER_CELL = 2_726  # same benchmark
PRESETS = ("3m", "10m", "100m")


def corpus_table(cells: float, cores_per_node: int, nodes: list[int], usd_core_h: float) -> str:
    rows = [
        "| input | nodes × cores | wall time | core-hours | cost (USD) |",
        "|---|---|---|---|---|",
    ]
    for fmt, per_core in CORPUS_CELLS_PER_CORE.items():
        core_h = cells / per_core / 3600
        for n in nodes:
            hours = core_h / (n * cores_per_node)
            rows.append(
                f"| {fmt} | {n} × {cores_per_node} | {_dur(hours)} | {core_h:,.1f} | "
                f"{core_h * usd_core_h:,.2f} |"
            )
    return "\n".join(rows)


def training_table(
    enc_tokens: list[int], mfu: float, peak: float, gpus: list[int], usd_gpu_h: float
) -> str:
    rows = [
        "| preset | params | cells trained (config) | enc. tokens | TFLOP/cell (train) | "
        "cells/s/GPU | GPUs | wall time | GPU-hours | cost (USD) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in PRESETS:
        cfg = PretrainConfig.load(f"configs/pretrain_{preset}.yaml")
        model = ModelConfig.from_name(cfg.model)
        params = parameter_counts(model)["total"]
        cells = cfg.train.max_steps * cfg.train.global_batch_size
        for tok in enc_tokens:
            flops = train_flops_per_cell(model, tok)
            per_gpu = mfu * peak / flops
            gpu_h = cells / per_gpu / 3600
            for g in gpus:
                rows.append(
                    f"| {preset} | {params / 1e6:.0f}M | {cells / 1e6:,.1f}M | {tok:,} | "
                    f"{flops / 1e12:.3f} | {per_gpu:,.0f} | {g} | {_dur(gpu_h / g)} | "
                    f"{gpu_h:,.1f} | {gpu_h * usd_gpu_h:,.0f} |"
                )
    return "\n".join(rows)


def allreduce_table(mfu: float, peak: float, enc_tokens: int) -> str:
    """Gradient bytes each GPU sends per optimizer step (ring all-reduce) vs the step time."""
    rows = [
        "| preset | GPUs | cells/GPU/step | step time at MFU | grad all-reduce per GPU | "
        "link needed to hide it |",
        "|---|---|---|---|---|---|",
    ]
    for preset in PRESETS:
        cfg = PretrainConfig.load(f"configs/pretrain_{preset}.yaml")
        model = ModelConfig.from_name(cfg.model)
        n = cfg.scale.num_workers
        params = parameter_counts(model)["total"]
        per_gpu_cells = cfg.train.global_batch_size / n
        step_s = per_gpu_cells * train_flops_per_cell(model, enc_tokens) / (mfu * peak)
        sent = 2 * (n - 1) / n * params * 4  # fp32 gradients, ring all-reduce
        gbit = sent * 8 / step_s / 1e9
        rows.append(
            f"| {preset} | {n} | {per_gpu_cells:g} | {step_s:.3f} s | {sent / 1e6:,.0f} MB | "
            f"{gbit:,.1f} Gbit/s |"
        )
    return "\n".join(rows)


def _dur(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", type=float, default=50e6)
    p.add_argument("--cores-per-node", type=int, default=16)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--core-hour-usd", type=float, default=0.0425, help="c6i.4xlarge / 16 cores")
    p.add_argument("--gpu", default="H100")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed; the design target")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    p.add_argument("--gpu-hour-usd", type=float, default=4.0, help="assumed on-demand price")
    p.add_argument("--enc-tokens", type=int, nargs="+", default=[1000, 2000])
    args = p.parse_args()
    peak = PEAK_BF16_FLOPS[args.gpu]
    print(f"## corpus build: {args.cells / 1e6:.0f}M cells")
    print(f"(parquet: {args.cells * PARQUET_BYTES_PER_CELL / 1e9:,.0f} GB)\n")
    print(corpus_table(args.cells, args.cores_per_node, args.nodes, args.core_hour_usd))
    print(f"\n## pretraining on {args.gpu} (bf16 peak {peak / 1e12:.0f} TFLOP/s), MFU {args.mfu}\n")
    print(training_table(args.enc_tokens, args.mfu, peak, args.gpus, args.gpu_hour_usd))
    print(f"\n## gradient all-reduce per optimizer step ({args.enc_tokens[0]} encoder tokens)\n")
    print(allreduce_table(args.mfu, peak, args.enc_tokens[0]))
    assert math.isfinite(peak)


if __name__ == "__main__":
    main()
