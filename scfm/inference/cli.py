"""``scfm embed``: batch inference over a corpus or a folder of count files (Ray Data).

Registered in ``scfm/cli.py`` as ``app.command("embed")(embed_command)``; ``workflows/embed.py``
runs the same command as a Ray job entry point.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 120)

Pool = Annotated[
    str,
    typer.Option(
        help="Pooled parts, comma-separated, in order: S,T,max,mean (or a subset); max_all = "
        "the official pool_type max."
    ),
]


def _depth_option(value: str) -> str | float | None:
    """CLI text → target depth: 'auto', 'S' (T = S), an official string, or a number."""
    if value.lower() in ("auto",):
        return "auto"
    if value.upper() == "S":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def embed_command(
    source: Annotated[
        str, typer.Argument(help="Corpus root (path/URI), a folder of .h5ad/10x files, or a file.")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Checkpoint folder/file, models:/name/version, or models.ckpt."
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder (parquet).")],
    variant: Annotated[
        str, typer.Option(help="Official checkpoint entry: cell/rde/gene.")
    ] = "cell",
    pool: Pool = "S,T,max,mean",
    settings: Annotated[
        str,
        typer.Option(
            help="auto (official for an official models.ckpt, else scfm), scfm, official."
        ),
    ] = "auto",
    target_depth: Annotated[
        str,
        typer.Option(
            help="T token: a log10 depth (4.0), official t4 / f10 / a1, S (T = S); auto: preset."
        ),
    ] = "auto",
    depth_total: Annotated[
        str,
        typer.Option(help="Cell total from all_genes (scfm) or vocab_genes (official); auto."),
    ] = "auto",
    batch_size: Annotated[int, typer.Option(help="Cells per forward pass.")] = 64,
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Padded tokens per forward pass (CPU 4096, GPU 65536; 0 = no cap)."),
    ] = None,
    block_cells: Annotated[int, typer.Option(help="Cells per Ray Data batch (per actor).")] = 2048,
    concurrency: Annotated[int, typer.Option(help="Model actors (one GPU each on GPU).")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu or cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (official: fp32; scfm: bf16 on CUDA), fp32 or bf16.")
    ] = "auto",
    split: Annotated[str | None, typer.Option(help="Corpus split: train or val.")] = None,
    corpus_version: Annotated[int | None, typer.Option(help="Corpus version (newest).")] = None,
    layer: Annotated[str | None, typer.Option(help="h5ad layer with raw counts.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show Ray Data progress bars.")] = True,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: local / RAY_ADDRESS).")
    ] = None,
    mlflow: Annotated[bool, typer.Option(help="Log a run to MLflow experiment 'embed'.")] = True,
    run_name: Annotated[str | None, typer.Option(help="MLflow run name.")] = None,
    umap_color: Annotated[
        str, typer.Option(help="obs column colouring the UMAP; 'none' for no plot.")
    ] = "cell_type",
    umap_max_cells: Annotated[int, typer.Option(help="Cells in the UMAP (random subset).")] = 20000,
) -> None:
    """Embed every cell of a corpus or of count files with Ray Data; write parquet by cell_id."""
    from scfm.inference.ray_batch import EmbedJobConfig, embed_dataset

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = EmbedJobConfig(
            source=source,
            output=output,
            model=model,
            variant=variant,
            pool=tuple(p.strip() for p in pool.split(",") if p.strip()),
            settings=settings,
            target_depth=_depth_option(target_depth),
            depth_total=depth_total,
            batch_size=batch_size,
            max_tokens=max_tokens,
            block_cells=block_cells,
            concurrency=concurrency,
            device=device,
            precision=precision,
            split=split,
            corpus_version=corpus_version,
            layer=layer,
            overwrite=overwrite,
            progress=progress,
            ray_address=ray_address,
            mlflow=mlflow,
            run_name=run_name,
            umap_color=None if umap_color.lower() == "none" else umap_color,
            umap_max_cells=umap_max_cells,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    from scfm.data.validate import InputValidationError
    from scfm.model.checkpoint import CheckpointError

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
