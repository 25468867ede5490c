"""DeepCDR drug response: Pearson / Spearman / RMSE of scfm vs every baseline on three splits.

Data: GDSC2 ln(IC50) joined with the shared GDSC expression (per-cell-line z-scores) and the
drugs' SMILES — 184,159 (cell line, drug) pairs of 921 cell lines × 228 drugs when nothing is
subsampled. Splits (the same for every method): random pairs (the paper's setting), leave cell
lines out, leave drugs out; 10 % test, 10 % of the rest for validation (early stopping).

Methods: DeepCDR on raw expression (the original branch), the additive model (drug + cell-line
effects), the drug mean, ridge on expression PCA + drug one-hot / Morgan fingerprint, and DeepCDR
on frozen scfm embeddings of every cell line's profile for each ``--model`` plus its random-init
control (default: only the tiny random-init model — no pretrained weights exist on a CPU box).

    python benchmarks/deepcdr.py                                  # all pairs (hours on 2 CPUs)
    python benchmarks/deepcdr.py --max-cell-lines 300 --max-genes 697 --max-epochs 4 \\
        --fusion mlp --batch-size 512                             # quick: ~10 min on 2 CPUs
    python benchmarks/deepcdr.py --model checkpoints/scfm-10m     # a trained model + control

Prints one table per split and the run time; writes the evaluation outputs to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="GDSC2", help="GDSC2, GDSC1 or CCLE")
    parser.add_argument("--model", action="append", default=[], help="scfm checkpoint (repeat)")
    parser.add_argument("--split", action="append", default=None, help="random, cell, drug")
    parser.add_argument("--max-cell-lines", type=int, default=None)
    parser.add_argument("--max-drugs", type=int, default=None)
    parser.add_argument("--max-genes", type=int, default=None, help="top-variance genes")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--fusion", default="deepcdr", choices=["deepcdr", "mlp"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/benchmarks/deepcdr")
    args = parser.parse_args(argv)

    import logging

    import torch
    from threadpoolctl import threadpool_limits

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("scfm.tasks.deepcdr_eval").setLevel(logging.INFO)  # progress

    from scfm.tasks.deepcdr_eval import (
        DeepCDREvaluateConfig,
        DrugDataConfig,
        additive_verdicts,
        evaluate_deepcdr,
        markdown_table,
    )

    torch.set_num_threads(args.threads)
    os.environ.setdefault(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlflow.db'}"
    )
    cfg = DeepCDREvaluateConfig(
        data=DrugDataConfig(
            dataset=args.dataset,
            max_cell_lines=args.max_cell_lines,
            max_drugs=args.max_drugs,
            max_genes=args.max_genes,
            seed=args.seed,
        ),
        splits=args.split or ["random", "cell", "drug"],
        seed=args.seed,
        models=args.model,
        head={
            "max_epochs": args.max_epochs,
            "fusion": args.fusion,
            "batch_size": args.batch_size,
        },
        output_dir=args.out,
        device="auto",
    )
    start = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        result = evaluate_deepcdr(cfg)
    total = time.perf_counter() - start
    print("\n".join(result.data.report.lines()))
    print(
        f"expression: {result.data.expression.values.shape[1]:,} genes "
        f"({result.data.expression.kind}); head: {cfg.head}"
    )
    print()
    print(markdown_table(result.table))
    print("\n".join(additive_verdicts(result.table)))
    print(f"\ntotal run time {total:.0f} s; outputs in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
