"""Pretrain xTrimoGene on a corpus with Ray Train.

Local Ray::

    python workflows/pretrain.py --corpus results/corpus --set model=3m --set train.max_steps=2000

On a cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python workflows/pretrain.py --config configs/pretrain_10m.yaml --set scale.num_workers=8

Configuration: defaults ← ``--config`` YAML ← ``--set section.key=value`` (see
``scfm.train.config``). ``--resume RUN_DIR`` continues a run (step counter, optimizer, data
position). ``--smoke-test`` runs a few steps of the tiny model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from scfm.train.config import SMOKE_TEST_OVERRIDES, PretrainConfig
from scfm.train.pretrain import run_pretraining


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--config", help="YAML file with PretrainConfig fields")
    parser.add_argument("--corpus", help="corpus directory (shortcut for --set data.corpus=...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. train.lr=3e-4",
    )
    parser.add_argument("--resume", help="Ray Train run directory or checkpoint to continue")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=1,
        help="worker failures to recover from via the last checkpoint",
    )
    parser.add_argument("--smoke-test", action="store_true", help="a few tiny-model steps")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    overrides = (list(SMOKE_TEST_OVERRIDES) if args.smoke_test else []) + args.overrides
    if args.corpus:
        overrides.append(f"data.corpus={args.corpus}")
    cfg = PretrainConfig.load(args.config, overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    result = run_pretraining(cfg, resume=args.resume, max_failures=args.max_failures)
    summary = {
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "checkpoint": result.checkpoint_dir,
        "run_dir": result.run_dir,
        **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
