"""SCAD single-cell drug response: AUROC / AUPRC of scfm-SCAD vs raw-expression SCAD vs classifiers
without adaptation, on the proxy target, for the paper's four drugs.

Source: GDSC1 ln(IC50) of each drug, binarized by the GDSC thresholds (sensitive = ln IC50 below
the drug's cut), with the shared GDSC expression (per-cell-line z-scores). Target: the **proxy
target** — pseudo single cells (multinomial UMI counts, 1,000–5,000 per cell) of cell lines held
out from the source, labelled with their line's call (no labelled single-cell drug-response set is
available offline; see docs/drug_response.md). Each seed holds out other lines, splits and
initialises anew; 20 % of the target cells are scored, the rest adapt unlabelled.

Methods: SCAD (λ = 1) and the same network without the adversary (λ = 0) on frozen scfm
embeddings (pool S, T, max, mean) of each ``--model`` plus its random-init control (default: only
the tiny random-init model — no pretrained weights exist on a CPU box) and on raw expression;
logistic regression on raw expression.

    python benchmarks/scad.py                              # 4 drugs × 5 seeds, 10–16 min, 2 CPUs
    python benchmarks/scad.py --drug PLX4720 --seeds 10
    python benchmarks/scad.py --model checkpoints/scfm-10m # a trained model + its control

Prints the table (mean ± SD over seeds) and the run time; writes the outputs to ``--out``.
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
    parser.add_argument("--drug", action="append", default=None, help="drug (repeat)")
    parser.add_argument("--dataset", default="GDSC1", help="GDSC1 (all four drugs), GDSC2")
    parser.add_argument("--model", action="append", default=[], help="scfm checkpoint (repeat)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-genes", type=int, default=1000, help="top-variance genes")
    parser.add_argument("--proxy-lines", type=int, default=5, help="held-out lines per class")
    parser.add_argument("--cells-per-line", type=int, default=40)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--adv-weight", type=float, default=1.0, help="λ of the SCAD rows")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default="results/benchmarks/scad")
    args = parser.parse_args(argv)

    import logging

    import torch
    from threadpoolctl import threadpool_limits

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("scfm.tasks.scad_eval").setLevel(logging.INFO)  # progress

    from scfm.tasks.scad_data import ProxyConfig
    from scfm.tasks.scad_eval import (
        PAPER_DRUGS,
        ScadEvaluateConfig,
        ScadSourceConfig,
        ScadTargetConfig,
        evaluate_scad,
        markdown_table,
    )

    torch.set_num_threads(args.threads)
    os.environ.setdefault(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlflow.db'}"
    )
    n = args.proxy_lines
    cfg = ScadEvaluateConfig(
        drugs=args.drug or list(PAPER_DRUGS),
        source=ScadSourceConfig(dataset=args.dataset, max_genes=args.max_genes),
        target=ScadTargetConfig(
            proxy=ProxyConfig(
                n_sensitive_lines=n, n_resistant_lines=n, cells_per_line=args.cells_per_line
            )
        ),
        seeds=list(range(args.seeds)),
        models=args.model,
        head={"max_epochs": args.max_epochs, "adv_weight": args.adv_weight},
        output_dir=args.out,
        device="auto",
    )
    start = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        result = evaluate_scad(cfg)
    total = time.perf_counter() - start
    for line in result.sources.values():
        print(f"source {line}")
    print(f"target {result.target} (proxy: pseudo single cells, not real single-cell data)")
    print(f"genes: {args.max_genes} highest-variance; head: {cfg.head}")
    print()
    print(markdown_table(result.table))
    print(f"\ntotal run time {total:.0f} s; outputs in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
