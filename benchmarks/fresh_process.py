"""Run one benchmark measurement in a fresh interpreter, so its peak memory is its own.

A script calls :func:`add_worker_option` on its parser, returns early when
:func:`serve_worker` handled a ``--_worker`` call, and measures with :func:`measure`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable


def add_worker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--_worker", help=argparse.SUPPRESS)


def serve_worker(args: argparse.Namespace, run_worker: Callable[[dict], dict]) -> bool:
    """In a ``--_worker`` call: run the job, print its JSON result, return True."""
    if not args._worker:
        return False
    print(json.dumps(run_worker(json.loads(args._worker))))
    return True


def measure(script: str, job: dict) -> dict:
    """Run ``script --_worker JOB`` in a fresh interpreter and return its result."""
    out = subprocess.run(
        [sys.executable, script, "--_worker", json.dumps(job)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
