"""``scfm evaluate deepcdr`` and ``scfm finetune deepcdr`` (typer commands).

Registered in ``scfm.tasks.cli`` by::

    from scfm.tasks.deepcdr_cli import evaluate_deepcdr_command, finetune_deepcdr_command

    evaluate_app.command("deepcdr")(evaluate_deepcdr_command)
    finetune_app.command("deepcdr")(finetune_deepcdr_command)

Heavy imports (torch, RDKit, Ray) happen inside the commands.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

# Options shared by both commands.
DATASET = Annotated[
    str,
    typer.Option(help="GDSC2, GDSC1 or CCLE (shared tables), or a name for --response."),
]
RESPONSE = Annotated[
    Path | None,
    typer.Option(help="Custom response table (.parquet/.csv/.tsv) instead of --dataset's."),
]
CELL_COL = Annotated[str | None, typer.Option(help="Cell-line column of --response.")]
DRUG_COL = Annotated[str | None, typer.Option(help="Drug column of --response.")]
VALUE_COL = Annotated[str | None, typer.Option(help="Response column of --response.")]
VALUE = Annotated[
    str | None, typer.Option(help="ln_ic50 (values already ln IC50) or ic50_um (logged here).")
]
EXPRESSION = Annotated[
    Path | None,
    typer.Option(
        help="Cell lines × genes (.parquet/.csv/.h5ad; bulk TPM or counts, or z-scores). "
        "Default: the shared GDSC z-score matrix."
    ),
]
EXPRESSION_KIND = Annotated[
    str, typer.Option(help="auto (negative values → zscore), zscore or bulk.")
]
SMILES = Annotated[
    Path | None, typer.Option(help="Table with drug_name, smiles (default: the shared one).")
]
MAX_LINES = Annotated[
    int | None, typer.Option(help="Keep a seeded random subset of cell lines (quick runs).")
]
MAX_DRUGS = Annotated[int | None, typer.Option(help="Keep a seeded random subset of drugs.")]
MAX_GENES = Annotated[
    int | None,
    typer.Option(help="Keep the N highest-variance genes (original DeepCDR: 697; sets scfm cost)."),
]
TEST_SIZE = Annotated[float, typer.Option(help="Test fraction of pairs / cell lines / drugs.")]
VAL_SIZE = Annotated[float, typer.Option(help="Validation fraction of the rest (selection).")]
POOL = Annotated[
    list[str] | None,
    typer.Option(
        "--pool",
        help="scfm embedding parts (repeatable): S, T, max, mean, max_all. Default max_all "
        "(the scFoundation DeepCDR run).",
    ),
]
ZSCORE_SCALE = Annotated[
    float, typer.Option(help="z-scores → pseudo-expression 2^(scale·z) for the scfm branch.")
]
SEED = Annotated[int, typer.Option(help="Seed of subsets, splits and training.")]


def _data_config(
    dataset,
    response,
    cell_col,
    drug_col,
    value_col,
    value,
    expression,
    kind,
    smiles,
    lines,
    drugs,
    genes,
    seed,
):
    from scfm.tasks.deepcdr_eval import DrugDataConfig

    return DrugDataConfig(
        dataset=dataset,
        response=str(response) if response else None,
        cell_col=cell_col,
        drug_col=drug_col,
        value_col=value_col,
        value=value,
        expression=str(expression) if expression else None,
        expression_kind=kind,
        smiles=str(smiles) if smiles else None,
        max_cell_lines=lines,
        max_drugs=drugs,
        max_genes=genes,
        seed=seed,
    )


def evaluate_deepcdr_command(
    dataset: DATASET = "GDSC2",
    split: Annotated[
        list[str] | None,
        typer.Option(
            "--split",
            help="random (pairs), cell (leave cell lines out), drug (leave drugs out); "
            "repeatable, default all three.",
        ),
    ] = None,
    model: MODELS = None,
    control: CONTROL = True,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="Baselines (repeatable): deepcdr_expression, additive, drug_mean, ridge. "
            "Default: all.",
        ),
    ] = None,
    max_epochs: Annotated[int, typer.Option(help="DeepCDR epochs (early stopping on val).")] = 40,
    fusion: Annotated[str, typer.Option(help="deepcdr (original conv fusion) or mlp.")] = "deepcdr",
    batch_size: Annotated[int, typer.Option(help="Pairs per training step.")] = 256,
    test_size: TEST_SIZE = 0.1,
    val_size: VAL_SIZE = 0.1,
    response: RESPONSE = None,
    cell_col: CELL_COL = None,
    drug_col: DRUG_COL = None,
    value_col: VALUE_COL = None,
    value: VALUE = None,
    expression: EXPRESSION = None,
    expression_kind: EXPRESSION_KIND = "auto",
    smiles: SMILES = None,
    max_cell_lines: MAX_LINES = None,
    max_drugs: MAX_DRUGS = None,
    max_genes: MAX_GENES = None,
    pool: POOL = None,
    zscore_scale: ZSCORE_SCALE = 2.0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/evaluate/deepcdr"),
    mlflow: LOG_EVALUATION = True,
    device: DEVICE = "auto",
    seed: SEED = 0,
) -> None:
    """Drug response (DeepCDR): scfm (+ random-init control) vs baselines on the same splits."""
    from scfm.tasks.deepcdr_eval import (
        DeepCDREvaluateConfig,
        additive_verdicts,
        evaluate_deepcdr,
        markdown_table,
    )

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = DeepCDREvaluateConfig(
        data=_data_config(
            dataset,
            response,
            cell_col,
            drug_col,
            value_col,
            value,
            expression,
            expression_kind,
            smiles,
            max_cell_lines,
            max_drugs,
            max_genes,
            seed,
        ),
        splits=list(split) if split else ["random", "cell", "drug"],
        test_size=test_size,
        val_size=val_size,
        seed=seed,
        models=list(model or []),
        control=control,
        baselines=list(baseline) if baseline else None,
        head={"max_epochs": max_epochs, "fusion": fusion, "batch_size": batch_size},
        pool=list(pool) if pool else ["max_all"],
        zscore_scale=zscore_scale,
        output_dir=str(out),
        mlflow=mlflow,
        device=device,
    )
    try:
        with console.status("evaluating scfm and baselines on drug response…"):
            result = evaluate_deepcdr(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    for line in result.data.report.lines():
        console.print(line, highlight=False)
    console.print(markdown_table(result.table), highlight=False, markup=False)
    for line in additive_verdicts(result.table):
        console.print(line, highlight=False)
    console.print("\n[bold]Results[/bold]")
    for kind, file in result.files.items():
        console.print(f"  {kind:<18} {file.resolve()}")
    if result.run_id:
        console.print(f"  MLflow run         {result.run_id}")


def finetune_deepcdr_command(
    dataset: DATASET = "GDSC2",
    model: Annotated[
        str, typer.Option(help="Backbone: checkpoint, models:/name/version or random:<preset>.")
    ] = "random:tiny",
    cell_input: Annotated[
        str, typer.Option(help="scfm (frozen embedding of each cell line) or expression.")
    ] = "scfm",
    split: Annotated[
        str, typer.Option(help="random (pairs), cell (leave lines out), drug (leave drugs out).")
    ] = "random",
    test_size: TEST_SIZE = 0.1,
    val_size: VAL_SIZE = 0.1,
    num_samples: NUM_SAMPLES = 8,
    max_epochs: Annotated[int, typer.Option(help="Epochs per trial (ASHA max_t).")] = 40,
    grace_period: GRACE_PERIOD = 4,
    cpus_per_trial: CPUS_PER_TRIAL = 1.0,
    gpus_per_trial: GPUS_PER_TRIAL = 0.0,
    register_as: Annotated[
        str | None, typer.Option(help="Model registry name for the best head.")
    ] = "scfm-deepcdr-head",
    response: RESPONSE = None,
    cell_col: CELL_COL = None,
    drug_col: DRUG_COL = None,
    value_col: VALUE_COL = None,
    value: VALUE = None,
    expression: EXPRESSION = None,
    expression_kind: EXPRESSION_KIND = "auto",
    smiles: SMILES = None,
    max_cell_lines: MAX_LINES = None,
    max_drugs: MAX_DRUGS = None,
    max_genes: MAX_GENES = None,
    pool: POOL = None,
    zscore_scale: ZSCORE_SCALE = 2.0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/finetune/deepcdr"),
    device: DEVICE = "auto",
    seed: SEED = 0,
    smoke_test: Annotated[bool, typer.Option(help="4 trials × 3 epochs.")] = False,
) -> None:
    """Ray Tune sweep of the DeepCDR head (ASHA, MLflow runs per trial), best head tested."""
    from scfm.tasks.deepcdr_eval import DeepCDRFinetuneConfig, finetune_deepcdr
    from scfm.tasks.drug_data import PairSplitConfig
    from scfm.tasks.tune import SweepConfig

    if smoke_test:
        num_samples, max_epochs, grace_period = 4, 3, 1
    cfg = DeepCDRFinetuneConfig(
        data=_data_config(
            dataset,
            response,
            cell_col,
            drug_col,
            value_col,
            value,
            expression,
            expression_kind,
            smiles,
            max_cell_lines,
            max_drugs,
            max_genes,
            seed,
        ),
        split=PairSplitConfig(split, test_size, val_size, seed),  # type: ignore[arg-type]
        cell_input=cell_input,
        model=model,
        sweep=SweepConfig(
            num_samples=num_samples,
            max_epochs=max_epochs,
            grace_period=grace_period,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            seed=seed,
            register_as=register_as,
            storage_path=str((out / "tune").resolve()),
            name="deepcdr-sweep",
            run_name=f"deepcdr sweep {dataset} {split}",
        ),
        pool=list(pool) if pool else ["max_all"],
        zscore_scale=zscore_scale,
        output_dir=str(out),
        device=device,
    )
    try:
        result = finetune_deepcdr(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    t = result.test
    console.print(
        f"[bold]best head[/bold] ({result.cell_input} + DeepCDR): {result.sweep.best_config}"
    )
    console.print(
        f"  test Pearson {t['test_pearson']:.3f}, Spearman {t['test_spearman']:.3f}, "
        f"RMSE {t['test_rmse']:.3f} ({int(t['test_n'])} pairs)"
    )
    console.print(
        f"  MLflow parent run {result.sweep.parent_run_id} "
        f"({len(result.sweep.trial_run_ids)} trial runs)"
    )
    console.print(f"  model            {result.sweep.model_uri or result.sweep.model_dir}")
    for kind, file in result.files.items():
        console.print(f"  {kind:<16} {file.resolve()}")
