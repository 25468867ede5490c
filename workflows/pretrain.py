"""Ray job entry point: pretrain xTrimoGene on a corpus with Ray Train (``scfm pretrain``).

Local Ray::

    python workflows/pretrain.py --corpus results/corpus --model 3m --train.max-steps 2000

On a cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python workflows/pretrain.py --config configs/pretrain_10m.yaml --scale.num-workers 8

All options are those of ``scfm pretrain`` (``--help``): defaults ← ``--config`` YAML ← options
← ``--set section.key=value``; ``--resume RUN_DIR`` continues a run; ``--smoke-test`` runs a few
steps of the tiny model. The logic lives in :mod:`scfm.train`.
"""

from __future__ import annotations

import sys


def cli_args(argv: list[str]) -> list[str]:
    """The ``scfm`` command line this entry point runs (tests parse it with the real CLI)."""
    return ["pretrain", *argv]


def main(argv: list[str] | None = None) -> None:
    from scfm.cli import app

    app(cli_args(sys.argv[1:] if argv is None else argv), prog_name="pretrain.py")


if __name__ == "__main__":
    main()
