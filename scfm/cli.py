"""The ``scfm`` command line: ``scfm demo``, ``scfm genes map``, ``scfm data list``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scfm import __version__
from scfm.corpus.cli import corpus_app
from scfm.inference.cli import embed_command
from scfm.tasks.cli import evaluate_app, finetune_app, predict_app
from scfm.train.cli import pretrain_command

app = typer.Typer(
    name="scfm",
    help="Single-cell foundation models end to end: corpus, pretraining, inference, fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
genes_app = typer.Typer(
    help="The 19,264-gene vocabulary and gene-id mapping.", no_args_is_help=True
)
data_app = typer.Typer(help="Bundled and registered data resources.", no_args_is_help=True)
app.add_typer(genes_app, name="genes")
app.add_typer(corpus_app, name="corpus")
app.add_typer(data_app, name="data")
app.add_typer(finetune_app, name="finetune")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(predict_app, name="predict")
app.command("embed")(embed_command)
app.command("pretrain")(pretrain_command)

# Piped output (CI logs, files) gets a wide console rather than rich's 80-column fallback.
console = Console(width=None if sys.stdout.isatty() else 120)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"scfm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug messages too.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    from scfm.logs import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


@genes_app.command("map")
def genes_map(
    path: Annotated[Path, typer.Argument(help="An .h5ad file, a 10x MEX directory or a 10x .h5.")],
    layer: Annotated[
        str | None, typer.Option(help="h5ad layer with raw counts ('raw' = adata.raw.X).")
    ] = None,
    genome: Annotated[
        str | None, typer.Option(help="Genome group of a multi-genome 10x .h5.")
    ] = None,
    backed: Annotated[bool, typer.Option(help="Read h5ad X from disk in blocks.")] = False,
    min_mapped_fraction: Annotated[
        float | None, typer.Option(help="Reject inputs with fewer genes in the vocabulary.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Map an input's genes onto the vocabulary and validate its counts."""
    from scfm.data.report import summarize_input

    summary = summarize_input(
        path.name,
        path,
        layer=layer,
        genome=genome,
        backed=backed,
        min_mapped_fraction=min_mapped_fraction,
    )
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        console.print(str(summary), highlight=False, markup=False)
    if not summary.ok:
        raise typer.Exit(code=1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for all results.")] = Path("results/demo"),
    steps: Annotated[int, typer.Option(help="Pretraining steps of the demo model.")] = 60,
    tune_samples: Annotated[
        int, typer.Option(help="Ray Tune trials of the annotation head sweep.")
    ] = 4,
    tune_epochs: Annotated[int, typer.Option(help="Epochs per sweep trial.")] = 15,
    head_epochs: Annotated[int, typer.Option(help="Epochs of the DeepCDR/SCAD/GEARS heads.")] = 3,
    small: Annotated[
        bool,
        typer.Option(
            "--small", help="Every stage at the smallest settings (CI): 4 steps, 2 trials, 1 epoch."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show Ray Data progress bars.")] = True,
) -> None:
    """Run the main job on the bundled example data and say where the results are.

    Inputs are validated and mapped onto the vocabulary, built into a corpus by the Ray Data job
    and used to pretrain the tiny model with Ray Train (2 workers); the model's embeddings are
    drawn as a UMAP, annotate cell types (Ray Tune sweep of the head) beside the simple baselines,
    and feed one short run of each drug / perturbation head against its baselines. Every stage is
    an MLflow run linked to the one before; the summary prints direct links into the MLflow UI.
    """
    from scfm.demo import DemoConfig, run_demo

    if small:
        cfg = DemoConfig.small(out, progress=progress)
    else:
        cfg = DemoConfig(
            out=out,
            pretrain_steps=steps,
            tune_samples=tune_samples,
            tune_epochs=tune_epochs,
            head_epochs=head_epochs,
            progress=progress,
        )
    results = run_demo(cfg, console)
    console.rule("[bold]Results")
    for label, where in results.items():
        # soft_wrap: long links stay one line (the terminal wraps them; copying gets them whole)
        console.print(f"  {label:<18} {where}", highlight=False, soft_wrap=True)


@data_app.command("list")
def data_list() -> None:
    """List registered resources and where each one resolves."""
    from rich.table import Table

    from scfm import datasets

    table = Table(title="scfm data resources")
    for col in ("name", "file", "found at", "description"):
        table.add_column(col)
    for res in datasets.list_resources():
        try:
            where = str(datasets.fetch(res.name, download=False))
        except datasets.ResourceNotFoundError:
            where = "[yellow]missing[/yellow]" + (" (downloadable)" if res.url else "")
        table.add_row(res.name, res.relpath, where, res.description)
    console.print(table)


if __name__ == "__main__":
    app()
