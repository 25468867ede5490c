"""Perturbation prediction: GEARS with scfm gene embeddings vs GEARS vs simple baselines.

Data: the Papalexi 2021 ECCITE-seq screen (``papalexi2021``: THP-1 cells, 25 single-gene
knock-outs with cells, 299 measured genes). Split: GEARS' simulation split (75 % of the perturbed
genes train, their singles' cells are training data; the other genes' knock-outs are held out),
repeated over ``--seeds``. Methods, all on the same splits:

* GEARS + scfm gene embeddings of ``--model`` (default ``random:tiny``: the tiny preset with
  random weights — no pretrained weights exist on a CPU box; with a random model this row *is*
  the random-init control) and of a random-init model of the same size (added when
  ``--model`` is a trained checkpoint);
* with ``--pretrain-steps N``: also the tiny preset briefly pretrained (RDA, N steps) in this
  process on the Papalexi cells themselves (labels unused) — a check that training the model
  changes its embeddings' value, not a foundation model;
* GEARS with learned gene embeddings (the original);
* no change (control mean), mean training effect, linear model (Ahlmann-Eltze et al.).

Metrics on the held-out perturbations' pseudobulk means: top-20 DE MSE, Pearson delta (all
genes and DE genes), direction accuracy; mean ± sd over seeds; seconds per method and seed.

    python benchmarks/gears.py                          # ~5 min on 2 shared CPU cores
    python benchmarks/gears.py --seeds 1 --max-epochs 3 # quick look
    python benchmarks/gears.py --model models:/scfm-pretrained/3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def pretrain_on_papalexi(steps: int, seed: int):
    """The tiny preset pretrained for ``steps`` RDA steps of 16 Papalexi cells (no labels)."""
    import numpy as np

    from scfm import datasets
    from scfm.data.genes import GeneVocab
    from scfm.data.io import read_counts
    from scfm.tasks.models import briefly_pretrain

    adata = read_counts(datasets.fetch("papalexi2021"))
    counts = GeneVocab.load().map(adata.var_names).apply(adata.X)
    start = time.perf_counter()
    backbone = briefly_pretrain(
        counts, np.asarray(adata.X.sum(axis=1)).ravel(), steps=steps, seed=seed, device="cpu"
    )
    m = backbone.metadata
    print(
        f"pretrained {backbone.label} in {time.perf_counter() - start:.0f} s "
        f"(masked MSE {m['first_loss']:.3f} → {m['last_loss']:.3f})",
        flush=True,
    )
    return backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random:tiny", help="scfm model for gene embeddings")
    parser.add_argument("--seeds", default="1,2,3", help="split seeds, comma-separated")
    parser.add_argument("--pretrain-steps", type=int, default=0, help="0 = no trained model")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument(
        "--max-cells-per-condition",
        type=int,
        default=300,
        help="GEARS training cells per condition (0 = all; GEARS uses all)",
    )
    parser.add_argument("--embed-cells", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default="results/benchmarks/gears")
    args = parser.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from scfm.tasks.gears_evaluate import GearsEvaluateConfig, evaluate_gears, markdown_table
    from scfm.tasks.perturb_data import PerturbDataConfig

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = GearsEvaluateConfig(
        data=PerturbDataConfig("papalexi2021"),
        models=[args.model],
        seeds=seeds,
        head={"max_epochs": args.max_epochs, "patience": args.patience},
        max_cells_per_condition=args.max_cells_per_condition or None,
        embed_cells=args.embed_cells,
        dataset="papalexi2021",
        output_dir=args.out,
        mlflow=False,
        device="cpu",
        progress=False,
    )
    start = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        backbones = []
        if args.pretrain_steps:
            backbones.append(pretrain_on_papalexi(args.pretrain_steps, seeds[0]))
        result = evaluate_gears(cfg, backbones=backbones)
    wall = time.perf_counter() - start
    d = result.summary["data"]
    s0 = result.splits[0]
    print(
        f"\n## Papalexi 2021 (THP-1, {d['n_perturbations']} single knock-outs, "
        f"{d['n_cells']:,} cells × {d['n_genes']} genes), GEARS simulation split, seeds {seeds}"
    )
    print(
        f"seed {s0.seed}: {len(s0.train)} train / {len(s0.val)} val / {len(s0.test)} held-out "
        f"perturbations; perturbation graph: {result.summary['perturbation_graph']}"
    )
    print(markdown_table(result.table))
    best = result.table.sort_values("mse_de").iloc[0]
    best_r = result.table.sort_values("pearson_delta", ascending=False).iloc[0]
    print(
        f"\nlowest top-20 DE MSE: {best['method']} ({best['mse_de']:.4f}); "
        f"highest Pearson delta: {best_r['method']} ({best_r['pearson_delta']:.3f})"
    )
    print("\nper seed (top-20 DE MSE):")
    pivot = result.per_seed.pivot(index="method", columns="seed", values="mse_de")
    print(pivot.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\ntotal wall time {wall:.0f} s; outputs in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
