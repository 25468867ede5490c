"""Ray job entry point: build (or, with ``--refresh``, refresh) a corpus (``scfm corpus``).

Local::

    python workflows/build_corpus.py -o corpus --census-uri tests-census --min-genes 200

On a cluster (same command, unchanged)::

    ray job submit --working-dir . -- python workflows/build_corpus.py --refresh \\
        -o s3://bucket/corpus --census-version 2025-01-30

All options are those of ``scfm corpus build`` / ``scfm corpus refresh`` (``--help``); the logic
lives in :mod:`scfm.corpus`. The code revision of the checkout (``git rev-parse``) is recorded in
the manifest unless ``--code-revision`` is given.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cli_args(argv: list[str]) -> list[str]:
    """The ``scfm`` command line this entry point runs (tests parse it with the real CLI)."""
    args = list(argv)
    command = "refresh" if "--refresh" in args else "build"
    args = [a for a in args if a != "--refresh"]
    revision = _git_revision()
    if revision and "--help" not in args and not any(a.startswith("--code-revision") for a in args):
        args += ["--code-revision", revision]
    return ["corpus", command, *args]


def main(argv: list[str] | None = None) -> None:
    from scfm.cli import app

    app(cli_args(sys.argv[1:] if argv is None else argv), prog_name="build_corpus.py")


if __name__ == "__main__":
    main()
