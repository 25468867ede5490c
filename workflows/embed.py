"""Ray job entry point: embed a corpus or a folder of count files with a pretrained model.

Local Ray::

    python workflows/embed.py results/corpus -m models:/scfm-10m/1 -o results/embeddings

On a cluster (one GPU actor per model replica)::

    ray job submit --working-dir . -- python workflows/embed.py s3://bucket/corpus \\
        -m models:/scfm-100m/2 -o /mnt/embeddings --concurrency 8 --device cuda

All options are those of ``scfm embed`` (``--help``); the logic lives in
:mod:`scfm.inference.ray_batch`.
"""

from __future__ import annotations

import sys


def cli_args(argv: list[str]) -> list[str]:
    """The ``scfm`` command line this entry point runs (tests parse it with the real CLI)."""
    return ["embed", *argv]


def main(argv: list[str] | None = None) -> None:
    from scfm.cli import app

    app(cli_args(sys.argv[1:] if argv is None else argv), prog_name="embed.py")


if __name__ == "__main__":
    main()
