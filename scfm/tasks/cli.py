"""``scfm finetune …``, ``scfm evaluate …`` and ``scfm predict …`` commands (registered in
``scfm.cli``).

Heavy imports (torch, Ray, scikit-learn) happen inside the commands, so ``scfm --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scfm.tasks.cli_common import CPUS_PER_TRIAL, GPUS_PER_TRIAL, GRACE_PERIOD, NUM_SAMPLES

finetune_app = typer.Typer(
    help="Fine-tune downstream heads with Ray Tune sweeps (MLflow experiment 'finetune').",
    no_args_is_help=True,
)
evaluate_app = typer.Typer(
    help="Evaluate scfm against baselines on labelled data (MLflow experiment 'evaluate').",
    no_args_is_help=True,
)
predict_app = typer.Typer(
    help="Apply a trained downstream head to your own data (writes into a copy of the AnnData).",
    no_args_is_help=True,
)
console = Console(width=None if sys.stdout.isatty() else 120)
logger = logging.getLogger(__name__)

# Options shared by the annotation commands.
H5AD = Annotated[Path, typer.Option("--h5ad", help="Labelled .h5ad with raw counts.")]
LABEL_KEY = Annotated[str, typer.Option("--label-key", help="obs column with the cell labels.")]
LAYER = Annotated[
    str | None, typer.Option(help="Layer with raw counts ('raw' = adata.raw.X); default X.")
]
SPLIT_KEY = Annotated[
    str | None,
    typer.Option("--split-key", help="obs column to split by (e.g. condition, donor)."),
]
TRAIN_VALUE = Annotated[
    list[str] | None,
    typer.Option(
        "--train-value", help="split-key value of the training cells (repeatable: several)."
    ),
]
TEST_VALUE = Annotated[
    list[str] | None,
    typer.Option(
        "--test-value",
        help="split-key value of the test cells (repeatable; default: all others).",
    ),
]
TEST_GROUPS = Annotated[
    int | None,
    typer.Option(
        "--test-groups",
        help="Grouped hold-out: N values of --split-key (e.g. donors), drawn with --seed, are "
        "the test cells; all other values train.",
    ),
]
TEST_SIZE = Annotated[
    float, typer.Option(help="Test fraction of a stratified random split (no --split-key).")
]
MIN_CLASS = Annotated[
    int, typer.Option(help="Classes with fewer training cells are 'rare': not in macro-F1.")
]
NORMALIZED = Annotated[
    bool,
    typer.Option(
        "--normalized-input",
        help="Fallback for files with only log1p(normalized) values: reconstruct integer "
        "counts with --total-counts-key (refused if they do not come out as integers).",
    ),
]
TOTALS = Annotated[
    str | None,
    typer.Option("--total-counts-key", help="obs column of UMIs per cell (--normalized-input)."),
]
SEED = Annotated[int, typer.Option(help="Seed of splits, heads and sweeps.")]


def _fail(exc: Exception) -> None:
    console.print(f"[red]{type(exc).__name__}[/red]: {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _split(split_key, train_value, test_value, test_size, min_class_cells, seed, test_groups=None):
    from scfm.tasks.labelled import SplitConfig

    def one_or_many(values):
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    if test_groups is not None and split_key is None:
        raise typer.BadParameter("--test-groups needs --split-key (the column of the groups)")
    return SplitConfig(
        split_key=split_key,
        train_value=one_or_many(train_value),
        test_value=one_or_many(test_value),
        test_groups=test_groups,
        test_size=test_size,
        min_class_cells=min_class_cells,
        seed=seed,
    )


_USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, KeyError)


@evaluate_app.command("annotation")
def evaluate_annotation_cmd(
    h5ad: H5AD,
    label_key: LABEL_KEY,
    split_key: SPLIT_KEY = None,
    train_value: TRAIN_VALUE = None,
    test_value: TEST_VALUE = None,
    test_groups: TEST_GROUPS = None,
    test_size: TEST_SIZE = 0.3,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="scfm model: checkpoint folder, models:/name/version, or random:<preset> "
            "(repeatable). A random-init control of the first model's size is always added.",
        ),
    ] = None,
    control: Annotated[bool, typer.Option(help="Add the random-init control.")] = True,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="Baselines to run (repeatable): pca_lr, all_genes_lr, pca_knn, scvi_lr. "
            "Default: all installed.",
        ),
    ] = None,
    scvi_epochs: Annotated[int, typer.Option(help="scVI training epochs.")] = 100,
    tune_samples: Annotated[
        int, typer.Option(help="Pick the MLP head by a Ray Tune sweep of N trials (0 = defaults).")
    ] = 0,
    max_epochs: Annotated[int, typer.Option(help="MLP head epochs (early stopping on val).")] = 40,
    layer: LAYER = None,
    normalized_input: NORMALIZED = False,
    total_counts_key: TOTALS = None,
    min_class_cells: MIN_CLASS = 5,
    dataset: Annotated[
        str | None, typer.Option(help="Name in tables (default: file stem).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/evaluate"),
    mlflow: Annotated[
        bool, typer.Option(help="Log a run to MLflow (experiment 'evaluate').")
    ] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda:1, …")] = "auto",
    seed: SEED = 0,
) -> None:
    """Cell annotation: scfm (+ random-init control) vs LR / kNN / scVI baselines, same split."""
    from scfm.tasks.evaluate import EvaluateConfig, evaluate_annotation, markdown_table

    cfg = EvaluateConfig(
        h5ad=str(h5ad),
        label_key=label_key,
        layer=layer,
        split=_split(
            split_key, train_value, test_value, test_size, min_class_cells, seed, test_groups
        ),
        models=list(model or []),
        control=control,
        baselines=list(baseline) if baseline else None,
        scvi_epochs=scvi_epochs,
        head={"max_epochs": max_epochs},
        tune_samples=tune_samples,
        normalized_input=normalized_input,
        total_counts_key=total_counts_key,
        dataset=dataset,
        output_dir=str(out),
        mlflow=mlflow,
        device=device,
    )
    try:
        with console.status("evaluating scfm and baselines…"):
            result = evaluate_annotation(cfg)
    except _USER_ERRORS as exc:
        _fail(exc)
    console.print(markdown_table(result.table), highlight=False, markup=False)
    if result.n_missing_labels:
        console.print(f"dropped {result.n_missing_labels} cells with a missing label")
    flagged = result.classes[result.classes.status.isin(["rare", "unseen"])]
    for row in flagged.itertuples():
        console.print(
            f"class {row[1]!r}: {row.status} ({row.n_train} train cells), not in macro-F1"
        )
    console.print("\n[bold]Results[/bold]")
    for kind, file in result.files.items():
        console.print(f"  {kind:<16} {file.resolve()}")
    if result.run_id:
        console.print(f"  MLflow run       {result.run_id}")


@evaluate_app.command("gene-modules")
def evaluate_gene_modules_cmd(
    h5ad: H5AD,
    model: Annotated[str, typer.Option(help="scfm model (see `evaluate annotation`).")],
    group_key: Annotated[
        str | None, typer.Option(help="obs column defining the cell group.")
    ] = None,
    group_value: Annotated[str | None, typer.Option(help="Value of group-key to use.")] = None,
    n_modules: Annotated[int, typer.Option(help="Number of gene modules.")] = 10,
    method: Annotated[str, typer.Option(help="kmeans or ward.")] = "kmeans",
    gene_sets: Annotated[
        list[str] | None,
        typer.Option(
            "--gene-sets", help="Collections (repeatable): hallmark, c2_cp, cell_cycle, mito, ribo."
        ),
    ] = None,
    max_cells: Annotated[int, typer.Option(help="Cells averaged per gene embedding.")] = 200,
    min_frac: Annotated[float, typer.Option(help="Genes expressed in ≥ this cell fraction.")] = 0.1,
    layer: LAYER = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/gene_modules"),
    seed: SEED = 0,
) -> None:
    """Cluster a cell group's gene context embeddings into modules; gene-set enrichment (FDR)."""
    import matplotlib.pyplot as plt

    from scfm.data.io import read_counts
    from scfm.tasks.gene_modules import find_gene_modules
    from scfm.tasks.models import load_backbone
    from scfm.tasks.plots import enrichment_heatmap

    try:
        adata = read_counts(h5ad, layer=layer)
        cells = None
        if group_key is not None:
            if group_key not in adata.obs.columns:
                raise ValueError(
                    f"group column {group_key!r} is not in obs; obs columns are: "
                    f"{', '.join(map(str, adata.obs.columns))}"
                )
            cells = (adata.obs[group_key].astype(str) == str(group_value)).to_numpy()
            if not cells.any():
                raise ValueError(f"no cell has {group_key} == {group_value!r}")
        backbone = load_backbone(model, seed=seed)
        with console.status("gene embeddings and modules…"):
            result = find_gene_modules(
                adata,
                backbone.model,
                cells=cells,
                n_modules=n_modules,
                method=method,
                collections=tuple(gene_sets or ["hallmark"]),
                max_cells=max_cells,
                min_frac=min_frac,
                seed=seed,
                group=f"{group_key}={group_value}" if group_key else "all cells",
            )
    except _USER_ERRORS as exc:
        _fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    result.modules.to_csv(out / "modules.csv", index=False)
    result.enrichment.to_csv(out / "enrichment.csv", index=False)
    fig = enrichment_heatmap(result.enrichment)
    fig.savefig(out / "enrichment.png", dpi=120)
    plt.close(fig)
    hits = result.top_hits()
    console.print(f"{result.modules.shape[0]} genes in {n_modules} modules ({backbone.label})")
    for r in hits.itertuples():
        console.print(f"  module {r.module}: {r.gene_set} (FDR {r.fdr:.2g}, {r.overlap} genes)")
    if hits.empty:
        console.print("  no module is enriched for a gene set at FDR < 0.05")
    for name in ("modules.csv", "enrichment.csv", "enrichment.png"):
        console.print(f"  {name:<16} {(out / name).resolve()}")


@finetune_app.command("annotation")
def finetune_annotation_cmd(
    h5ad: H5AD,
    label_key: LABEL_KEY,
    model: Annotated[
        str, typer.Option(help="Backbone: checkpoint, models:/name/version or random:<preset>.")
    ] = "random:tiny",
    split_key: SPLIT_KEY = None,
    train_value: TRAIN_VALUE = None,
    test_value: TEST_VALUE = None,
    test_groups: TEST_GROUPS = None,
    test_size: TEST_SIZE = 0.3,
    finetune_layers: Annotated[
        int, typer.Option(help="Encoder layers trained with the head (0 = frozen embeddings).")
    ] = 0,
    num_samples: NUM_SAMPLES = 8,
    max_epochs: Annotated[int, typer.Option(help="Epochs per trial (ASHA max_t).")] = 40,
    grace_period: GRACE_PERIOD = 4,
    cpus_per_trial: CPUS_PER_TRIAL = 1.0,
    gpus_per_trial: GPUS_PER_TRIAL = 0.0,
    register_as: Annotated[
        str | None, typer.Option(help="Model registry name for the best head.")
    ] = "scfm-annotation-head",
    layer: LAYER = None,
    normalized_input: NORMALIZED = False,
    total_counts_key: TOTALS = None,
    min_class_cells: MIN_CLASS = 5,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path(
        "results/finetune/annotation"
    ),
    seed: SEED = 0,
    smoke_test: Annotated[bool, typer.Option(help="4 trials × 3 epochs.")] = False,
) -> None:
    """Ray Tune sweep of the cell-annotation head (ASHA), best head tested and registered."""
    from scfm.tasks.finetune import AnnotationFinetuneConfig, finetune_annotation
    from scfm.tasks.tune import SweepConfig

    if smoke_test:
        num_samples, max_epochs, grace_period = 4, 3, 1
    cfg = AnnotationFinetuneConfig(
        h5ad=str(h5ad),
        label_key=label_key,
        model=model,
        layer=layer,
        split=_split(
            split_key, train_value, test_value, test_size, min_class_cells, seed, test_groups
        ),
        finetune_layers=finetune_layers,
        sweep=SweepConfig(
            num_samples=num_samples,
            max_epochs=max_epochs,
            grace_period=grace_period,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            seed=seed,
            register_as=register_as,
            storage_path=str(out / "tune"),
            run_name=f"annotation sweep {h5ad.stem}",
        ),
        normalized_input=normalized_input,
        total_counts_key=total_counts_key,
        output_dir=str(out),
    )
    try:
        result = finetune_annotation(cfg)
    except _USER_ERRORS as exc:
        _fail(exc)
    t = result.test
    console.print(f"[bold]best head[/bold] ({result.backbone} + MLP): {result.sweep.best_config}")
    console.print(f"  test macro-F1 {t.macro_f1:.3f}, accuracy {t.accuracy:.3f} ({t.n_test} cells)")
    console.print(
        f"  MLflow parent run {result.sweep.parent_run_id} "
        f"({len(result.sweep.trial_run_ids)} trial runs)"
    )
    console.print(f"  model            {result.sweep.model_uri or result.sweep.model_dir}")
    for kind, file in result.files.items():
        console.print(f"  {kind:<16} {file.resolve()}")


# Perturbation response (GEARS): the commands live with their task.
from scfm.tasks.gears_cli import evaluate_gears_command, finetune_gears_command  # noqa: E402

evaluate_app.command("gears")(evaluate_gears_command)
finetune_app.command("gears")(finetune_gears_command)

# Drug response (DeepCDR)
from scfm.tasks.deepcdr_cli import evaluate_deepcdr_command, finetune_deepcdr_command  # noqa: E402

evaluate_app.command("deepcdr")(evaluate_deepcdr_command)
finetune_app.command("deepcdr")(finetune_deepcdr_command)

# Single-cell drug response (SCAD)
from scfm.tasks.scad_cli import (  # noqa: E402
    evaluate_scad_command,
    finetune_scad_command,
    predict_scad_command,
)

evaluate_app.command("scad")(evaluate_scad_command)
finetune_app.command("scad")(finetune_scad_command)
predict_app.command("scad")(predict_scad_command)

# Zero-shot embedding evaluation (scIB metrics against PCA / scVI baselines)
from scfm.tasks.embedding_cli import evaluate_embedding_command  # noqa: E402

evaluate_app.command("embedding")(evaluate_embedding_command)
