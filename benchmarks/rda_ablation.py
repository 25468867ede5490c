"""Ablation of the RDA objective's settings on real cells: what the paper's choices change.

Trains the same model from the same initialisation on the same batches (real Kang PBMC cells,
1,675 for training, 300 held out) under three objectives, and evaluates all of them with one
fixed validation objective:

* ``previous``: every eligible cell down-sampled, every masked gene hidden (scfm before this
  change);
* ``duplicate-or-downsample``: eligible cells down-sampled with probability 0.5, else duplicated
  (the paper), masked genes hidden;
* ``official`` (the default): the above plus the official replacement scheme for masked
  expressed genes (72 % hidden, 18 % kept, 10 % another gene's value).

Metrics on the held-out cells: ``val_loss`` (masked MSE with every masked gene hidden and no
down-sampling, the task the embeddings are used for), ``val_rde_mae`` (every eligible cell
down-sampled, predict the original depth: read-depth enhancement).

    python benchmarks/rda_ablation.py                     # tiny preset, 150 steps (~8 min, 2 cores)
    python benchmarks/rda_ablation.py --preset 3m --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from scfm import datasets  # noqa: E402
from scfm.data.genes import GeneVocab  # noqa: E402
from scfm.data.io import read_counts  # noqa: E402
from scfm.model.config import ModelConfig  # noqa: E402
from scfm.model.rda import RDAConfig, collate  # noqa: E402
from scfm.model.xtrimogene import XTrimoGene  # noqa: E402
from scfm.train.loop import train_step, validation_metrics, validation_sums  # noqa: E402

ARMS = {
    "previous": RDAConfig(downsample_prob=1.0, replace_prob=1.0, random_value_prob=0.0),
    "duplicate-or-downsample": RDAConfig(replace_prob=1.0, random_value_prob=0.0),
    "official": RDAConfig(),
}
EVAL = RDAConfig(min_total_counts=float("inf"), replace_prob=1.0, random_value_prob=0.0)


def loader_batches(X: sp.csr_matrix, totals: np.ndarray, size: int, rng) -> list[dict]:
    order = rng.permutation(X.shape[0])
    out = []
    for start in range(0, order.size - size + 1, size):
        rows = np.sort(order[start : start + size])
        sub = X[rows]
        out.append(
            {
                "gene_idx": sub.indices.astype(np.int32),
                "counts": sub.data.astype(np.float32),
                "offsets": sub.indptr.astype(np.int64),
                "total_counts": totals[rows],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adata = read_counts(datasets.fetch("kang2018"))
    X = sp.csr_matrix(GeneVocab.load().map(adata.var_names).apply(adata.X), dtype=np.float32)
    totals = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    rng = np.random.default_rng(0)
    perm = rng.permutation(X.shape[0])
    val_rows, train_rows = np.sort(perm[:300]), np.sort(perm[300:])
    epochs = -(-args.steps * args.batch // train_rows.size)
    train = [
        b
        for e in range(epochs)
        for b in loader_batches(
            X[train_rows], totals[train_rows], args.batch, np.random.default_rng(e)
        )
    ][: args.steps]
    val = loader_batches(X[val_rows], totals[val_rows], 50, np.random.default_rng(99))
    print(
        f"{args.preset}, {args.steps} steps of {args.batch} cells, lr {args.lr}; "
        f"{(totals >= 1000).mean():.0%} of cells deep enough to down-sample"
    )
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    init = XTrimoGene(ModelConfig.from_name(args.preset)).state_dict()
    print(f"{'objective':<26}{'val_loss':>10}{'val_rde_mae':>13}{'s':>7}")
    for name, rda in ARMS.items():
        model = XTrimoGene(ModelConfig.from_name(args.preset))
        model.load_state_dict(init)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        gen = np.random.default_rng(1)
        start = time.perf_counter()
        for batch in train:
            train_step(model, [collate(batch, rda, gen)], opt, None, device=cpu)
        seconds = time.perf_counter() - start
        val_rde = dataclasses.replace(rda, replace_prob=1.0, random_value_prob=0.0)
        loss = validation_metrics(validation_sums(model, val, EVAL, device=cpu))["val_loss"]
        rde = validation_metrics(validation_sums(model, val, val_rde, device=cpu))["val_rde_mae"]
        print(f"{name:<26}{loss:>10.4f}{rde:>13.4f}{seconds:>7.0f}")


if __name__ == "__main__":
    main()
