"""Ray job entry point: a Ray Tune sweep of a downstream head (``scfm finetune TASK``).

Local Ray::

    python workflows/finetune.py annotation --h5ad kang.h5ad --label-key cell_type \\
        --split-key condition --train-value control --model models:/scfm-pretrained/3

On a cluster (same command; trials spread over the cluster's CPUs / GPUs)::

    ray job submit --working-dir . -- python workflows/finetune.py annotation \\
        --h5ad /data/atlas.h5ad --label-key cell_type --num-samples 64 --gpus-per-trial 0.25

``--smoke-test`` runs 4 trials of 3 epochs. All options are those of ``scfm finetune annotation``
(``--help``); the logic lives in :mod:`scfm.tasks.finetune` and :mod:`scfm.tasks.tune`.
"""

from __future__ import annotations

import sys


def cli_args(argv: list[str]) -> list[str]:
    """The ``scfm`` command line this entry point runs (tests parse it with the real CLI)."""
    return ["finetune", *argv]


def main(argv: list[str] | None = None) -> None:
    from scfm.cli import app

    app(cli_args(sys.argv[1:] if argv is None else argv), prog_name="finetune.py")


if __name__ == "__main__":
    main()
