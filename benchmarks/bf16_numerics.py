"""What keeping the value embedding and the FAVOR+ products in fp32 under bf16 autocast costs.

Under ``torch.autocast(dtype=bfloat16)`` scfm computes the value embedding (auto-discretization,
whose scalar input would otherwise be rounded to 3 significant digits) and the linear-attention
products (sums over 19,266 positions) in fp32. This script measures, in one run on the same
batches, the previous behaviour (both in bf16 under autocast) against the current one:

* accuracy: max |bf16-autocast output − fp32 output| / max |fp32 output| of the model's
  predictions, per cell;
* resolution: distinct embeddings of depth tokens 3.700, 3.701, …, 3.799 (100 values);
* time of a training step (forward, masked MSE, backward, AdamW) under bf16 autocast on CPU.

    python benchmarks/bf16_numerics.py                 # 3m preset (~2 min on 2 CPU cores)
    python benchmarks/bf16_numerics.py --preset 10m --steps 3
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_speed import synthetic_cells  # noqa: E402

from scfm.model import embedding, performer  # noqa: E402
from scfm.model.config import ModelConfig  # noqa: E402
from scfm.model.rda import RDAConfig, collate, masked_mse  # noqa: E402
from scfm.model.xtrimogene import XTrimoGene  # noqa: E402


def bf16_linear_attention(q, k, v):
    """The previous products: autocast left on, so the matmuls ran in bf16."""
    k_sum = k.sum(dim=-2)
    context = k.transpose(-2, -1) @ v.to(k.dtype)
    denom = (q @ k_sum.unsqueeze(-1)).to(context.dtype)
    return (q.to(context.dtype) @ context) / denom


def bf16_value_embedding(self, values, mask=None, pad=None):
    """The previous value embedding: its Linear layers autocast to bf16."""
    h = F.leaky_relu(self.mlp(values.unsqueeze(-1)), embedding.LEAKY_SLOPE)
    x = torch.softmax(self.alpha * h + self.mlp2(h), dim=-1) @ self.emb.weight
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), self.emb_mask.weight[0].to(x.dtype), x)
    if pad is not None:
        x = torch.where(pad.unsqueeze(-1), self.emb_pad.weight[0].to(x.dtype), x)
    return x


@contextmanager
def previous_numerics():
    saved = (performer.linear_attention, embedding.AutoDiscretization.forward)
    performer.linear_attention = bf16_linear_attention
    embedding.AutoDiscretization.forward = bf16_value_embedding
    try:
        yield
    finally:
        performer.linear_attention, embedding.AutoDiscretization.forward = saved


def bf16(fn):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="3m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name(args.preset, dropout=0.0))
    batches = [
        collate(synthetic_cells(args.batch, seed=s), RDAConfig(), generator=s)
        for s in range(args.steps + 1)
    ]

    # accuracy of the predictions under bf16 autocast against fp32
    b = batches[0]
    model.eval()
    with torch.no_grad():
        ref = model(*b.encoder_inputs(), b.masked)
        now = bf16(lambda: model(*b.encoder_inputs(), b.masked)).float()
        with previous_numerics():
            before = bf16(lambda: model(*b.encoder_inputs(), b.masked)).float()

    def err(x):
        return float(((x - ref).abs().amax(dim=1) / ref.abs().amax(dim=1)).max())

    # resolution of the value embedding: 100 depth tokens 0.001 apart
    S = torch.linspace(3.700, 3.799, 100)
    with torch.no_grad():
        distinct_now = torch.unique(bf16(lambda: model.token_emb(S)), dim=0).shape[0]
        with previous_numerics():
            distinct_before = torch.unique(bf16(lambda: model.token_emb(S)), dim=0).shape[0]

    # training-step time under bf16 autocast
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = masked_mse(
                model(*batch.encoder_inputs(), batch.masked), batch.target, batch.masked
            )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    times = {"fp32 value embedding + FAVOR+ products": [], "bf16 (previous)": []}
    for batch in batches[1:]:  # alternate, so drift hits both alike
        t = time.perf_counter()
        step(batch)
        times["fp32 value embedding + FAVOR+ products"].append(time.perf_counter() - t)
        with previous_numerics():
            t = time.perf_counter()
            step(batch)
            times["bf16 (previous)"].append(time.perf_counter() - t)

    print(
        f"preset {args.preset}, batch {args.batch}, {args.steps} steps each, {args.threads} threads"
    )
    print(f"{'under bf16 autocast':<42}{'max rel err':>12}{'distinct S':>12}{'s/step':>9}")
    now_t = float(np.median(times["fp32 value embedding + FAVOR+ products"]))
    before_t = float(np.median(times["bf16 (previous)"]))
    for name, e, distinct, t in (
        ("fp32 value embedding + FAVOR+ products", err(now), distinct_now, now_t),
        ("bf16 (previous)", err(before), distinct_before, before_t),
    ):
        print(f"{name:<42}{e:>12.2e}{distinct:>12}{t:>9.2f}")
    print(f"cost of fp32: {now_t / before_t:.2f}x the previous step time (median of pairs)")


if __name__ == "__main__":
    main()
