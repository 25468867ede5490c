"""Scaling study: pretrain several model sizes on several data sizes; plot loss vs size and FLOPs.

Local Ray::

    python workflows/scaling.py --corpus results/corpus --models tiny 3m 10m --cells 2000 20000

On a cluster (each point is a Ray Train run with the base config's scale settings)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python workflows/scaling.py --config configs/pretrain_10m.yaml \\
        --models 3m 10m 100m --cells 1000000 10000000 --set scale.num_workers=8 --concurrent 3

Each point is a nested MLflow run under a parent run that holds ``scaling.csv`` and
``scaling.png`` (validation loss vs non-embedding parameters and vs training FLOPs); the same
files are written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys

from scfm.logs import setup_logging
from scfm.train.config import PretrainConfig
from scfm.train.scaling import ScalingSweep, run_scaling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML file with PretrainConfig fields (the base)")
    parser.add_argument("--corpus", help="corpus directory (shortcut for --set data.corpus=...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    defaults = ScalingSweep()
    parser.add_argument("--models", nargs="+", default=defaults.models, help="model presets")
    parser.add_argument(
        "--cells", nargs="+", type=int, default=defaults.train_cells, help="train cells per run"
    )
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes per run")
    parser.add_argument("--name", default=defaults.name, help="sweep (parent run) name")
    parser.add_argument(
        "--concurrent",
        type=int,
        default=defaults.concurrent,
        help="points trained at the same time (each its own Ray Train worker group)",
    )
    parser.add_argument("--out", default="results/scaling", help="where the table and plot go")
    args = parser.parse_args(argv)
    setup_logging()

    overrides = list(args.overrides) + ([f"data.corpus={args.corpus}"] if args.corpus else [])
    base = PretrainConfig.load(args.config, overrides)
    sweep = ScalingSweep(
        models=args.models,
        train_cells=args.cells,
        epochs=args.epochs,
        name=args.name,
        concurrent=args.concurrent,
    )
    points = run_scaling(base, sweep, args.out)
    print(json.dumps([p.to_dict() for p in points], indent=2))
    print(f"table and plot: {args.out}/scaling.csv, {args.out}/scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
