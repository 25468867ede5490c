"""GPU benchmark, one short script (≤ 5 minutes on one GPU): embedding, pretraining step, official.

1. **embed**: end-to-end ``scfm.embed`` (validation, gene mapping, packing, transfer, encoder,
   pooling) of ``--cells`` synthetic cells at ~1,000 nonzero genes (resampled from real Kang
   PBMCs, gene symbols as ``var_names``) with the ``--preset`` model (default 100m), bf16, through
   the padding-free (jagged) and the padded encoder.
2. **pretraining step** (forward + RDA masked MSE + backward + AdamW) at micro-batches
   ``--micro-batches`` (default 8, 16, 32), bf16 autocast: cells/s, peak memory, MFU (analytic
   FLOPs of :mod:`scfm.model.flops` over the device's bf16 peak), eager and with the Performer
   attention cores compiled (``train.compile_attention``: the feature map's element-wise work
   fused); a
   size that runs out of memory is retried with decoder gradient checkpointing.
3. **official**: where ``../shared/reference/scfoundation_official`` is importable, the official
   model of the same sizes (random weights) on the same cells: its batched encoder forward and
   its training step at micro-batch 8 (``getEncoerDecoderData`` inputs, MSE on every position).

Anchors measured with the official code on one H100 (bf16): embedding loop 39 cells/s, batched
≈ 770 cells/s; pretraining ≈ 17 cells/s at micro-batch 8, out of memory at 16. Targets (issue
15): ≥ 2,000 cells/s embedding; ≥ 100 cells/s per GPU pretraining at micro-batch ≥ 32 in 80 GB.

    python benchmarks/gpu.py                                   # on a CUDA machine
    python benchmarks/gpu.py --device cpu --preset 3m --cells 300 --micro-batches 2 --steps 2

Prints one table per section and writes them as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference_host import make_cells  # noqa: E402
from benchmarks.model_speed import synthetic_cells  # noqa: E402
from scfm.model import ModelConfig, XTrimoGene  # noqa: E402
from scfm.model.config import N_GENES  # noqa: E402
from scfm.model.flops import peak_flops, train_flops_per_cell  # noqa: E402
from scfm.model.rda import RDAConfig, collate, masked_mse  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> float:
    """Seconds per call (after one warm-up call)."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def bf16(device: torch.device):
    """bf16 autocast on CUDA; fp32 elsewhere."""
    cuda = device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16) if cuda else nullcontext()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ------------------------------------------------------------------------------------ embedding
def bench_embed(args: argparse.Namespace, device: torch.device) -> list[dict]:
    import scfm
    from scfm.inference.embed import embed_packed
    from scfm.inference.engine import InferenceEngine

    adata = make_cells(args.cells, args.nnz)
    nnz = float(np.diff(adata.X.indptr).mean())
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name(args.preset)).to(device).eval()
    packed = synthetic_cells(args.cells, seed=1, frac_nonzero=args.nnz / N_GENES)
    runs: dict[str, Callable[[], object]] = {
        "scfm.embed (AnnData → embeddings)": lambda: scfm.embed(
            adata, model, batch_size=args.embed_batch, precision=args.precision, progress=False
        ),
    }
    for attention in ("jagged", "padded"):
        engine = InferenceEngine(
            model, device=device, precision=args.precision, attention=attention
        )
        runs[f"engine, packed cells, {attention} attention"] = lambda e=engine: embed_packed(
            e, packed, batch_size=args.embed_batch
        )
    rows = []
    for path, run in runs.items():
        reset_peak(device)
        try:
            s = timed(run, device)
            rows.append({"path": path, "cells_per_s": args.cells / s, "peak_gb": peak_gb(device),
                         "nnz_per_cell": nnz})  # fmt: skip
        except (RuntimeError, ValueError) as e:
            rows.append({"path": path, "error": str(e)[:200]})
    return rows


# -------------------------------------------------------------------------------- pretraining
def train_step_rate(
    cfg: ModelConfig, mb: int, steps: int, device: torch.device, compile_attn: bool
) -> dict:
    torch.manual_seed(0)
    model = XTrimoGene(cfg).to(device).train()
    if compile_attn:
        model.decoder.compile_attention()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    frac = 1000 / N_GENES
    batches = [
        collate(synthetic_cells(mb, seed=s, frac_nonzero=frac), RDAConfig(), generator=s).to(device)
        for s in range(steps)
    ]
    autocast = bf16(device)
    it = iter(range(10**9))

    def step() -> None:
        b = batches[next(it) % len(batches)]
        with autocast:
            loss = masked_mse(model(*b.encoder_inputs(), b.masked), b.target, b.masked)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # compile / allocator warm-up
    reset_peak(device)
    s = timed(step, device, repeat=steps)
    enc_tokens = float(np.mean([(~b.padding_mask).sum(1).float().mean().item() for b in batches]))
    rate = mb / s
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    mfu = rate * train_flops_per_cell(cfg, enc_tokens) / peak if peak else None
    return {"cells_per_s": rate, "peak_gb": peak_gb(device), "mfu": mfu, "enc_tokens": enc_tokens}


def bench_pretrain(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for compiled in (False, True):
        for mb in args.micro_batches:
            for ckpt in (False, True):
                cfg = ModelConfig.from_name(args.preset, dropout=0.0, grad_checkpoint=ckpt)
                row = {"micro_batch": mb, "attention": "compiled" if compiled else "eager",
                       "grad_checkpoint": ckpt}  # fmt: skip
                try:
                    row.update(train_step_rate(cfg, mb, args.steps, device, compiled))
                    rows.append(row)
                    break  # fits without checkpointing: skip the checkpointed run
                except Exception as e:  # noqa: BLE001 - OOM is a result here, not a failure
                    if not is_oom(e):
                        raise
                    row["error"] = "out of memory"
                    rows.append(row)
                    reset_peak(device)
    return rows


# ------------------------------------------------------------------------------ official code
def bench_official(args: argparse.Namespace, device: torch.device) -> list[dict]:
    try:
        from tests.official_reference import official_config, official_modules
    except ImportError as e:
        return [{"path": "official", "error": f"not measured: {e}"}]
    try:
        select_model, load = official_modules()
    except (FileNotFoundError, ImportError) as e:
        return [{"path": "official", "error": f"not measured: {e}"}]
    cfg = ModelConfig.from_name(args.preset)
    config = official_config(
        (cfg.enc_dim, cfg.enc_depth, cfg.enc_heads),
        (cfg.dec_dim, cfg.dec_depth, cfg.dec_heads, cfg.dec_dim_head),
    )
    flat = load.convertconfig({"config": config, "state_dict": {}})["config"]
    torch.manual_seed(0)
    model = select_model(flat).to(device)
    cells = synthetic_cells(max(args.micro_batches[0], 64), seed=0, frac_nonzero=1000 / N_GENES)
    dense = np.zeros((cells.n_cells, N_GENES + 2), np.float32)
    for i in range(dense.shape[0]):
        a, b = cells.offsets[i], cells.offsets[i + 1]
        x = cells.counts[a:b]
        dense[i, cells.gene_idx[a:b]] = np.log1p(x / x.sum() * 1e4)
        dense[i, -2:] = np.log10(cells.total_counts[i])
    rows_t = torch.from_numpy(dense).to(device)
    autocast = bf16(device)
    out = []

    @torch.no_grad()
    def embed_batch(batch: torch.Tensor) -> None:
        labels = batch > 0
        x, pad = load.gatherData(batch, labels, flat["pad_token_id"])
        ids = torch.arange(N_GENES + 2, device=device).repeat(batch.shape[0], 1)
        pos, _ = load.gatherData(ids, labels, flat["pad_token_id"])
        with autocast:
            h = model.token_emb(x.unsqueeze(2).float(), output_weight=0) + model.pos_emb(pos)
            model.encoder(h, pad)

    model.eval()
    n = rows_t.shape[0]
    for bs in (1, n):

        def run(bs: int = bs) -> None:
            for i in range(0, n, bs):
                embed_batch(rows_t[i : i + bs])

        s = timed(run, device)
        out.append({"path": f"official encoder, batch {bs}", "cells_per_s": n / s})

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mb = args.micro_batches[0]

    def step() -> None:
        batch = rows_t[:mb]
        enc, enc_pos, enc_pad, enc_lab, dec, dec_pad, _, _, dec_pos = load.getEncoerDecoderData(
            batch, batch, flat
        )
        with autocast:
            pred = model(
                x=enc, padding_label=enc_pad, encoder_position_gene_ids=enc_pos,
                encoder_labels=enc_lab, decoder_data=dec, mask_gene_name=False, mask_labels=None,
                decoder_position_gene_ids=dec_pos, decoder_data_padding_labels=dec_pad,
            )  # fmt: skip
            loss = ((pred.float() - batch) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    reset_peak(device)
    try:
        s = timed(step, device, repeat=args.steps)
        out.append({"path": f"official training step, micro-batch {mb}", "cells_per_s": mb / s,
                    "peak_gb": peak_gb(device)})  # fmt: skip
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        out.append({"path": f"official training step, micro-batch {mb}", "error": "out of memory"})
    return out


# ---------------------------------------------------------------------------------------- main
def fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return str(v)


def print_table(title: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n## {title}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:.1%}" if k == "mfu" and v is not None else fmt(v))
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="100m")
    p.add_argument("--cells", type=int, default=20_000, help="cells embedded")
    p.add_argument("--nnz", type=float, default=1000, help="target nonzeros per cell")
    p.add_argument("--embed-batch", type=int, default=256)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--micro-batches", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--steps", type=int, default=5, help="timed training steps per size")
    p.add_argument("--sections", nargs="+", default=["embed", "pretrain", "official"])
    p.add_argument("--out", default="results/gpu.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, preset {args.preset}", flush=True)
    results: dict[str, list[dict]] = {}
    for section, fn, title in (
        ("embed", bench_embed, "Embedding (end-to-end scfm.embed)"),
        ("pretrain", bench_pretrain, "Pretraining step"),
        ("official", bench_official, "Official scFoundation code, same sizes and cells"),
    ):
        if section in args.sections:
            t0 = time.perf_counter()
            results[section] = fn(args, device)
            print_table(f"{title} — {time.perf_counter() - t0:.0f} s", results[section])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "preset": args.preset, **results}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
