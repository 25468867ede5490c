"""``scfm evaluate embedding``: zero-shot embeddings vs HVG/PCA and scVI, scored with scIB.

Registered in ``scfm.tasks.cli`` next to ``evaluate annotation``::

    from scfm.tasks.embedding_cli import evaluate_embedding_command
    evaluate_app.command("embedding")(evaluate_embedding_command)

Heavy imports (torch, scib-metrics, scanpy) happen inside the command, so ``scfm --help`` stays
fast. The defaults repeat those of :class:`scfm.tasks.embedding_eval.EmbeddingEvalConfig`
(a test keeps them equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scfm.tasks.cli_common import LOG_EVALUATION, MODELS, USER_ERRORS, console

_ERRORS: tuple[type[Exception], ...] = (*USER_ERRORS, ImportError)  # scib-metrics missing


def evaluate_embedding_command(
    h5ad: Annotated[
        Path, typer.Option("--h5ad", help="Labelled .h5ad with raw counts (read backed).")
    ],
    label_key: Annotated[str, typer.Option("--label-key", help="obs column with the cell types.")],
    batch_key: Annotated[
        str | None,
        typer.Option(
            "--batch-key",
            help="obs column with the batches (donor, condition, …). Without it only the "
            "bio-conservation metrics are computed and the total is the bio-conservation score.",
        ),
    ] = None,
    model: MODELS = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="Baselines (repeatable): hvg_pca, all_genes_pca, scvi. Default: all installed.",
        ),
    ] = None,
    cells_per_batch: Annotated[
        int,
        typer.Option(
            help="Score at most this many cells per batch (all cells without --batch-key): a "
            "seeded subsample; 0 = every cell."
        ),
    ] = 2000,
    layer: Annotated[
        str | None, typer.Option(help="Layer with raw counts ('raw' = adata.raw.X); default X.")
    ] = None,
    scvi_epochs: Annotated[
        int | None, typer.Option(help="scVI epochs (default: scvi-tools' choice for the size).")
    ] = None,
    umap: Annotated[bool, typer.Option(help="Draw the side-by-side UMAPs.")] = True,
    dataset: Annotated[
        str | None, typer.Option(help="Name in tables (default: file stem).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path(
        "results/evaluate/embedding"
    ),
    mlflow: LOG_EVALUATION = True,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda:1, …")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the subsample, PCA, scVI, Leiden.")] = 0,
) -> None:
    """Zero-shot embeddings: scfm (+ random-init control) vs HVG/PCA and scVI, scIB metrics."""
    from scfm.tasks.embedding_eval import (
        EmbeddingEvalConfig,
        markdown_table,
        run_embedding_evaluation,
    )

    cfg = EmbeddingEvalConfig(
        label_key=label_key,
        batch_key=batch_key,
        models=list(model or []),
        baselines=list(baseline) if baseline else None,
        cells_per_batch=cells_per_batch or None,
        layer=layer,
        scvi_epochs=scvi_epochs,
        seed=seed,
        dataset=dataset,
        output_dir=str(out),
        umap=umap,
        mlflow=mlflow,
        device=device,
    )
    try:
        with console.status("embedding, baselines and scIB metrics…"):
            result = run_embedding_evaluation(h5ad, cfg)
    except _ERRORS as exc:
        console.print(f"{type(exc).__name__}: {exc}", style="red", highlight=False, markup=False,
                      soft_wrap=True)  # fmt: skip
        raise typer.Exit(code=1) from None
    console.print(
        markdown_table(result.table, batch=batch_key is not None),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    cells = result.summary["cells"]
    console.print(
        f"scored {cells['n_cells_scored']:,} of {cells['n_cells_input']:,} cells"
        + (
            f" (seeded subsample: at most {cells['cells_per_batch']:,} {cells['subsample_scope']})"
            if cells["subsampled"]
            else ""
        )
        + (
            f"; dropped {cells['n_cells_dropped_missing']:,} without a label or batch"
            if cells["n_cells_dropped_missing"]
            else ""
        ),
        highlight=False,
        markup=False,
    )
    for what, why in result.summary["skipped"].items():
        console.print(f"skipped {what}: {why}", highlight=False, markup=False)
    console.print(f"best total: {result.summary['winner']}", highlight=False, markup=False)
    console.print("\n[bold]Results[/bold]")
    for kind, file in result.files.items():
        console.print(
            f"  {kind:<16} {file.resolve()}", highlight=False, markup=False, soft_wrap=True
        )
    if result.run_id:
        console.print(f"  MLflow run       {result.run_id}")
