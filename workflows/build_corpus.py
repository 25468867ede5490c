"""Ray job entry point: build (or, with ``--refresh``, refresh) a corpus.

Local::

    python workflows/build_corpus.py -o corpus --census-uri tests-census --min-genes 200

On a cluster (same command, unchanged)::

    ray job submit --working-dir . -- python workflows/build_corpus.py --refresh \\
        -o s3://bucket/corpus --census-version 2025-01-30

All options are those of ``scfm corpus build`` / ``scfm corpus refresh`` (``--help``); the logic
lives in :mod:`scfm.corpus.build`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from scfm.corpus.cli import corpus_app

    args = list(sys.argv[1:] if argv is None else argv)
    command = "refresh" if "--refresh" in args else "build"
    corpus_app([command, *[a for a in args if a != "--refresh"]], prog_name="build_corpus.py")


if __name__ == "__main__":
    main()
