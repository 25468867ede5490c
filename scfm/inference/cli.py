"""``scfm embed``: batch inference over a corpus or a folder of count files (Ray Data).

Registered in ``scfm/cli.py``; ``workflows/embed.py`` runs the same command as a Ray job entry
point. Every option is a field of :class:`~scfm.inference.ray_batch.EmbedJobConfig`.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from scfm.cli_options import build_config, config_command
from scfm.inference.ray_batch import EmbedJobConfig

console = Console(width=None if sys.stdout.isatty() else 120)


def _embed(options: dict) -> None:
    """Embed every cell of a corpus or of count files with Ray Data; write parquet by cell_id."""
    from scfm.data.validate import InputValidationError
    from scfm.inference.ray_batch import embed_dataset
    from scfm.model.checkpoint import CheckpointError

    try:
        cfg = build_config(EmbedJobConfig, options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        result = embed_dataset(cfg)
    except (InputValidationError, CheckpointError, FileExistsError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(
        f"[bold]embedded {result.n_cells:,} cells[/bold] ({result.embedding_dim} dims) in "
        f"{result.seconds:.1f} s, {result.cells_per_s:.1f} cells/s"
    )
    console.print(f"  output       {result.output}", highlight=False)
    if result.umap_path:
        console.print(f"  UMAP         {result.umap_path}", highlight=False)
    if result.run_id:
        console.print(f"  MLflow run   {result.run_id} (experiment 'embed')", highlight=False)


embed_command = config_command(_embed, EmbedJobConfig, skip={"tags"})
