"""``scfm pretrain``: pretraining from the command line (registered in ``scfm.cli``).

Configuration: defaults ← ``--config`` YAML ← the options below (one per
:class:`~scfm.train.config.PretrainConfig` field, spelled ``--section.field``) ← ``--set
section.key=value``. ``workflows/pretrain.py`` runs this same command as a Ray job entry point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scfm.cli_options import config_command
from scfm.train.config import PretrainConfig

console = Console(width=None if sys.stdout.isatty() else 120)


def _pretrain(
    options: dict,
    config: Annotated[Path | None, typer.Option(help="YAML file of PretrainConfig fields.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: section.key=value (repeatable)."),
    ] = None,
    corpus: Annotated[
        str | None, typer.Option(help="Corpus directory (shortcut for --data.corpus).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Ray Train run directory or checkpoint to continue.")
    ] = None,
    max_failures: Annotated[int, typer.Option(help="Worker failures to recover from.")] = 1,
    smoke_test: Annotated[bool, typer.Option(help="A few steps of the tiny model.")] = False,
    print_config: Annotated[bool, typer.Option(help="Print the config as YAML and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Pretrain xTrimoGene with Ray Train (local Ray, or the cluster in RAY_ADDRESS)."""
    from scfm.train.config import SMOKE_TEST_OVERRIDES, merge_options, parse_overrides

    overrides = list(set_ or [])
    if corpus:
        overrides.append(f"data.corpus={corpus}")
    try:  # the smoke-test preset sits under the options: given options win
        preset = parse_overrides(list(SMOKE_TEST_OVERRIDES)) if smoke_test else {}
        cfg = PretrainConfig.load(config, overrides, merge_options(preset, options))
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if print_config:
        print(cfg.to_yaml())
        return
    from scfm.train.pretrain import run_pretraining

    result = run_pretraining(cfg, resume=resume, max_failures=max_failures)
    if as_json:
        summary = {
            "run_id": result.run_id,
            "model_uri": result.model_uri,
            "checkpoint": result.checkpoint_dir,
            "run_dir": result.run_dir,
            **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
        }
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[bold]pretraining finished[/bold] at step {result.metrics.get('step')}")
    for key in ("loss", "val_loss", "val_rde_mae"):
        if key in result.metrics:
            console.print(f"  {key:<12} {result.metrics[key]:.4f}")
    console.print(f"  MLflow run   {result.run_id}")
    console.print(f"  model        {result.model_uri or '(not registered)'}")
    console.print(f"  checkpoint   {result.checkpoint_dir}")


pretrain_command = config_command(
    _pretrain,
    PretrainConfig,
    skip={"model_overrides", "data.rda"},
    dotted=True,
    only_given=True,
)
