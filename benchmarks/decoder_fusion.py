"""Performer decoder element-wise work: eager vs ``torch.compile`` (fused), forward + backward.

A pretraining step spends most of its non-matmul time in the decoder's FAVOR+ feature map over
all 19,266 positions: ``(exp(dash − diag − stab) + eps) · m^-½`` on ``(B, H, N, m)`` tensors
(m = 266 random features for d = 64), for queries and keys, forward and backward; eager torch
makes one pass over the tensor per operation, ``torch.compile`` fuses the chain into one kernel.
This script times forward + backward of

* the FAVOR+ attention core (``FastAttention``: both feature maps + linear attention), and
* one whole decoder layer (attention, LayerNorms, FFN),

eager and compiled, on the preset's decoder sizes, and prints the ratio measured in the same run.
On a CPU the matmuls dominate both; the element-wise share, and so the gain, is larger on a GPU.

    python benchmarks/decoder_fusion.py                      # 100m decoder sizes, batch 1, CPU
    python benchmarks/decoder_fusion.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scfm.model.config import N_POS, ModelConfig  # noqa: E402
from scfm.model.decoder import DecoderLayer  # noqa: E402
from scfm.model.performer import FastAttention  # noqa: E402


def step_seconds(module, inputs, device: torch.device, repeat: int) -> float:
    def once() -> None:
        out = module(*inputs)
        out.float().square().mean().backward()

    once()
    once()  # compile, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="100m")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = ModelConfig.from_name(args.preset, dropout=0.0)
    B, N, H, d = args.batch, N_POS, cfg.dec_heads, cfg.dec_dim_head
    torch.manual_seed(0)
    attn = FastAttention(d, cfg.n_features).to(device)
    layer = DecoderLayer(cfg).to(device)
    qkv = [torch.randn(B, H, N, d, device=device, requires_grad=True) for _ in range(3)]
    x = torch.randn(B, N, cfg.dec_dim, device=device, requires_grad=True)
    print(f"{args.preset} decoder sizes: B={B}, N={N:,}, H={H}, d={d}, m={cfg.n_features}, "
          f"D={cfg.dec_dim}; {device}, {torch.get_num_threads()} threads", flush=True)  # fmt: skip
    print("\n| part | eager | compiled | eager / compiled |")
    print("|---|---:|---:|---:|")
    for name, module, inputs in (
        ("FAVOR+ attention core", attn, qkv),
        ("decoder layer", layer, [x]),
    ):
        eager = step_seconds(module, inputs, device, args.repeat)
        compiled = step_seconds(torch.compile(module), inputs, device, args.repeat)
        print(f"| {name} | {eager * 1e3:,.0f} ms | {compiled * 1e3:,.0f} ms "
              f"| {eager / compiled:.2f}× |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
