"""``scfm evaluate gears`` and ``scfm finetune gears`` (typer commands).

Registered in ``scfm.tasks.cli`` next to the annotation commands::

    evaluate_app.command("gears")(evaluate_gears_command)
    finetune_app.command("gears")(finetune_gears_command)

Heavy imports (torch, Ray, scanpy) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scfm.tasks.cli_common import (
    CONTROL,
    CPUS_PER_TRIAL,
    DEVICE,
    GPUS_PER_TRIAL,
    GRACE_PERIOD,
    LOG_EVALUATION,
    MODELS,
    NUM_SAMPLES,
    USER_ERRORS,
    console,
    fail,
)

H5AD = Annotated[
    str,
    typer.Option(
        "--h5ad",
        help="Perturb-seq .h5ad with raw counts, or a registered data set (e.g. papalexi2021).",
    ),
]
PERT_KEY = Annotated[
    str | None,
    typer.Option(
        "--perturbation-key",
        help="obs column naming the perturbed gene(s) ('A', 'A+B') or the control "
        "(default: the data set's preset, else 'condition').",
    ),
]
CONTROL_LABEL = Annotated[
    str | None,
    typer.Option(
        "--control-label",
        help="Label of the control cells (default: the preset, else 'ctrl').",
    ),
]
LAYER = Annotated[
    str | None, typer.Option(help="Layer with raw counts ('raw' = adata.raw.X); default X.")
]
MIN_CELLS = Annotated[int, typer.Option(help="Perturbations with fewer cells are refused.")]
DROP_INVALID = Annotated[
    bool,
    typer.Option(
        "--drop-invalid",
        help="Drop perturbations that cannot be used (unknown genes, too few cells) "
        "instead of stopping.",
    ),
]
GENE_SETS = Annotated[
    list[str] | None,
    typer.Option(
        "--gene-sets",
        help="Gene sets for the perturbation graph (repeatable): hallmark, c2_cp, cell_cycle, "
        "mito, ribo or a .gmt file. Default: hallmark + c2_cp.",
    ),
]
PERT_GRAPH = Annotated[
    Path | None,
    typer.Option(
        "--pert-graph",
        help="A precomputed perturbation graph instead of gene sets: CSV/TSV edge list with "
        "source, target, importance (GEARS' go.csv layout).",
    ),
]
MAX_CELLS = Annotated[
    int | None,
    typer.Option(help="Train GEARS on at most this many cells per condition (default: all)."),
]
EMBED_CELLS = Annotated[int, typer.Option(help="Control cells averaged per gene embedding.")]


def _data_config(h5ad, perturbation_key, control_label, layer, min_cells, drop_invalid):
    from scfm.tasks.perturb_data import PerturbDataConfig

    return PerturbDataConfig(
        h5ad=h5ad,
        perturbation_key=perturbation_key,
        control=control_label,
        layer=layer,
        min_cells=min_cells,
        drop_invalid=drop_invalid,
    )


def _graph_config(gene_sets, pert_graph):
    from scfm.tasks.perturb_graphs import DEFAULT_GENE_SETS, GraphConfig

    return GraphConfig(
        gene_sets=tuple(gene_sets or DEFAULT_GENE_SETS),
        edge_list=str(pert_graph) if pert_graph else None,
    )


def parse_seeds(values: list[str] | None) -> list[int]:
    """``["1,2", "3"]`` → ``[1, 2, 3]``."""
    seeds = [int(v) for item in values or ["1"] for v in str(item).split(",") if v.strip()]
    if not seeds:
        raise typer.BadParameter("give at least one split seed")
    return seeds


def evaluate_gears_command(
    h5ad: H5AD = "papalexi2021",
    perturbation_key: PERT_KEY = None,
    control_label: CONTROL_LABEL = None,
    model: MODELS = None,
    control: CONTROL = True,
    learned: Annotated[
        bool, typer.Option(help="Also run GEARS with learned gene embeddings (the original).")
    ] = True,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="Baselines (repeatable): no_change, mean, linear, additive. Default: all that "
            "apply (additive needs combinations).",
        ),
    ] = None,
    seeds: Annotated[
        list[str] | None,
        typer.Option("--seeds", help="Split seeds, e.g. --seeds 1,2,3 (repeatable)."),
    ] = None,
    max_epochs: Annotated[int, typer.Option(help="GEARS epochs (best val epoch kept).")] = 20,
    hidden: Annotated[int, typer.Option(help="GEARS hidden width.")] = 64,
    lr: Annotated[float, typer.Option(help="GEARS learning rate.")] = 1e-3,
    gene_sets: GENE_SETS = None,
    pert_graph: PERT_GRAPH = None,
    layer: LAYER = None,
    min_cells: MIN_CELLS = 20,
    drop_invalid: DROP_INVALID = False,
    max_cells_per_condition: MAX_CELLS = None,
    embed_cells: EMBED_CELLS = 200,
    dataset: Annotated[str | None, typer.Option(help="Name in tables.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/evaluate/gears"),
    mlflow: LOG_EVALUATION = True,
    device: DEVICE = "auto",
) -> None:
    """Perturbation prediction: GEARS + scfm gene embeddings vs controls and baselines."""
    from scfm.tasks.gears_evaluate import GearsEvaluateConfig, evaluate_gears, markdown_table

    cfg = GearsEvaluateConfig(
        data=_data_config(h5ad, perturbation_key, control_label, layer, min_cells, drop_invalid),
        models=list(model or []),
        control=control,
        learned=learned,
        baselines=list(baseline) if baseline else None,
        seeds=parse_seeds(seeds),
        graph=_graph_config(gene_sets, pert_graph),
        head={"max_epochs": max_epochs, "hidden": hidden, "lr": lr},
        max_cells_per_condition=max_cells_per_condition,
        embed_cells=embed_cells,
        dataset=dataset,
        output_dir=str(out),
        device=device,
        mlflow=mlflow,
    )
    try:
        with console.status("evaluating GEARS variants and baselines…"):
            result = evaluate_gears(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    console.print(markdown_table(result.table), highlight=False, markup=False)
    best = result.table.sort_values("mse_de").iloc[0]
    console.print(f"lowest top-20 DE MSE: {best['method']} ({best['mse_de']:.4f})")
    console.print("\n[bold]Results[/bold]")
    for kind, file in result.files.items():
        console.print(f"  {kind:<22} {file.resolve()}")
    if result.run_id:
        console.print(f"  MLflow run             {result.run_id}")


def finetune_gears_command(
    h5ad: H5AD = "papalexi2021",
    perturbation_key: PERT_KEY = None,
    control_label: CONTROL_LABEL = None,
    model: Annotated[
        str,
        typer.Option(
            help="Gene embeddings from this scfm model (checkpoint, models:/name/version, "
            "random:<preset>), or 'learned' for the original GEARS."
        ),
    ] = "random:tiny",
    seed: Annotated[int, typer.Option(help="Split seed (also seeds the sweep).")] = 1,
    num_samples: NUM_SAMPLES = 8,
    max_epochs: Annotated[int, typer.Option(help="Epochs per trial (ASHA max_t).")] = 20,
    grace_period: GRACE_PERIOD = 3,
    cpus_per_trial: CPUS_PER_TRIAL = 1.0,
    gpus_per_trial: GPUS_PER_TRIAL = 0.0,
    register_as: Annotated[
        str | None, typer.Option(help="Model registry name for the best head.")
    ] = "scfm-gears-head",
    gene_sets: GENE_SETS = None,
    pert_graph: PERT_GRAPH = None,
    layer: LAYER = None,
    min_cells: MIN_CELLS = 20,
    drop_invalid: DROP_INVALID = False,
    max_cells_per_condition: MAX_CELLS = None,
    embed_cells: EMBED_CELLS = 200,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/finetune/gears"),
    device: DEVICE = "auto",
    smoke_test: Annotated[bool, typer.Option(help="2 trials × 2 epochs.")] = False,
) -> None:
    """Ray Tune sweep of the GEARS head (lr, hidden width, GNN layers); best head tested."""
    from scfm.tasks.gears_finetune import GearsFinetuneConfig, finetune_gears
    from scfm.tasks.tune import SweepConfig

    if smoke_test:
        num_samples, max_epochs, grace_period = 2, 2, 1
    name = Path(h5ad).stem
    cfg = GearsFinetuneConfig(
        data=_data_config(h5ad, perturbation_key, control_label, layer, min_cells, drop_invalid),
        model=model,
        seed=seed,
        graph=_graph_config(gene_sets, pert_graph),
        sweep=SweepConfig(
            num_samples=num_samples,
            max_epochs=max_epochs,
            grace_period=grace_period,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            seed=seed,
            register_as=register_as,
            storage_path=str(out / "tune"),
            name="gears-sweep",
            run_name=f"gears sweep {name}",
        ),
        max_cells_per_condition=max_cells_per_condition,
        embed_cells=embed_cells,
        output_dir=str(out),
        device=device,
    )
    try:
        result = finetune_gears(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    t = result.test
    console.print(f"[bold]best head[/bold] ({result.label}): {result.sweep.best_config}")
    console.print(
        f"  test top-20 DE MSE {t['mse_de']:.4f}, Pearson delta {t['pearson_delta']:.3f} "
        f"({len(result.per_perturbation)} held-out perturbations)"
    )
    console.print(
        f"  MLflow parent run {result.sweep.parent_run_id} "
        f"({len(result.sweep.trial_run_ids)} trial runs)"
    )
    console.print(f"  model            {result.sweep.model_uri or result.sweep.model_dir}")
    for kind, file in result.files.items():
        console.print(f"  {kind:<20} {file.resolve()}")
