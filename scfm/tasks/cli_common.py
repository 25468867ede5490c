"""What the downstream task commands share: the console, user errors, common options.

The typer commands of DeepCDR, SCAD, GEARS and the zero-shot evaluation import these, so an
option reads the same in every ``scfm evaluate|finetune|predict`` command.
"""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 120)

# Exceptions that are the user's to fix: printed as one red line and exit code 1, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, KeyError)

DEVICE = Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda:1, …")]
MODELS = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        help="scfm model: checkpoint folder, models:/name/version, official models.ckpt or "
        "random:<preset> (repeatable). A random-init control of the first model's size is "
        "always added.",
    ),
]
CONTROL = Annotated[bool, typer.Option(help="Add the random-init control.")]
LOG_EVALUATION = Annotated[bool, typer.Option(help="Log a run to MLflow (experiment 'evaluate').")]

# Ray Tune sweep options every fine-tuning command shares (defaults stay with each command)
NUM_SAMPLES = Annotated[int, typer.Option(help="Trials drawn from the search space.")]
GRACE_PERIOD = Annotated[int, typer.Option(help="Epochs before ASHA may stop a trial.")]
CPUS_PER_TRIAL = Annotated[float, typer.Option(help="CPUs per trial.")]
GPUS_PER_TRIAL = Annotated[float, typer.Option(help="GPUs per trial.")]


def fail(exc: Exception) -> NoReturn:
    """Print a user error (its type and message) and exit with code 1."""
    console.print(f"[red]{type(exc).__name__}[/red]: {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)
