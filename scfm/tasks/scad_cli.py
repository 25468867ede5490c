"""``scfm evaluate scad``, ``scfm finetune scad`` and ``scfm predict scad`` (typer commands).

Registered in ``scfm.tasks.cli`` by::

    from scfm.tasks.scad_cli import (
        evaluate_scad_command, finetune_scad_command, predict_scad_command,
    )

    evaluate_app.command("scad")(evaluate_scad_command)
    finetune_app.command("scad")(finetune_scad_command)
    predict_app.command("scad")(predict_scad_command)

Heavy imports (torch, Ray, scikit-learn) happen inside the commands.
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
from scfm.tasks.deepcdr_cli import (
    CELL_COL,
    DRUG_COL,
    EXPRESSION,
    EXPRESSION_KIND,
    RESPONSE,
    VALUE,
    VALUE_COL,
    ZSCORE_SCALE,
)

logger = logging.getLogger(__name__)

# Options shared by evaluate and finetune.
DATASET = Annotated[
    str,
    typer.Option(help="GDSC1 (all four paper drugs), GDSC2 or CCLE, or a name for --response."),
]
LABELS = Annotated[
    Path | None,
    typer.Option(
        help="Your own bulk labels (.csv/.tsv/.parquet: cell_line, label = sensitive/resistant "
        "or 1/0, optional drug) instead of binarized IC50s."
    ),
]
LABEL_RULE = Annotated[
    str,
    typer.Option(
        "--label-rule",
        help="threshold (ln IC50 below the drug's GDSC binarization threshold) or zscore "
        "(per-drug z-score of ln IC50 below -z-cut).",
    ),
]
Z_CUT = Annotated[float, typer.Option(help="zscore rule: sensitive when z < -z-cut.")]
THRESHOLD = Annotated[
    float | None, typer.Option(help="threshold rule: a fixed ln IC50 cut instead of GDSC's.")
]
MIN_PER_CLASS = Annotated[int, typer.Option(help="Fewest source lines of each class accepted.")]
MAX_GENES = Annotated[
    int | None,
    typer.Option(help="Keep the N highest-variance expression genes (sets the scfm cost)."),
]
TARGET = Annotated[
    Path | None,
    typer.Option(
        "--target",
        help="Single cells (.h5ad with raw counts). Default: the proxy target (pseudo single "
        "cells of held-out bulk lines).",
    ),
]
LAYER = Annotated[
    str | None, typer.Option(help="Layer with raw counts ('raw' = adata.raw.X); default X.")
]
LABEL_KEY = Annotated[
    str | None,
    typer.Option(help="obs column of --target with sensitive / resistant per cell."),
]
GROUP_KEY = Annotated[
    str | None, typer.Option(help="obs column to show predictions by (default --label-key).")
]
TEST_SIZE = Annotated[
    float, typer.Option(help="Labelled target cells held out for scoring (rest adapt unlabelled).")
]
VAL_SIZE = Annotated[float, typer.Option(help="Source lines held out to select the epoch.")]
PROXY_LINES = Annotated[
    int, typer.Option(help="Proxy target: held-out lines of each class (sensitive, resistant).")
]
CELLS_PER_LINE = Annotated[int, typer.Option(help="Proxy target: pseudo single cells per line.")]
MIN_OVERLAP = Annotated[
    float, typer.Option(help="Shared genes / genes of the smaller set needed (source vs cells).")
]


def _source(opts: dict):
    """The source config from a command's options (``locals()``; option names = field names)."""
    from dataclasses import fields

    from scfm.tasks.scad_eval import ScadSourceConfig

    names = {f.name for f in fields(ScadSourceConfig)}
    return ScadSourceConfig(
        **{k: str(v) if isinstance(v, Path) else v for k, v in opts.items() if k in names}
    )


def _target(opts: dict, seed: int):
    """The target config (user cells, or the proxy) from a command's options."""
    from scfm.tasks.scad_data import ProxyConfig
    from scfm.tasks.scad_eval import ScadTargetConfig

    lines = opts["proxy_lines"]
    return ScadTargetConfig(
        h5ad=str(opts["target"]) if opts["target"] else None,
        layer=opts["layer"],
        label_key=opts["label_key"],
        group_key=opts["group_key"],
        proxy=ProxyConfig(
            n_sensitive_lines=lines,
            n_resistant_lines=lines,
            cells_per_line=opts["cells_per_line"],
            seed=seed,
        ),
        test_size=opts["test_size"],
        min_gene_overlap=opts["min_gene_overlap"],
    )


def evaluate_scad_command(
    drug: Annotated[
        list[str] | None,
        typer.Option(
            "--drug",
            help="Drug (repeatable). Default: the paper's four — Sorafenib, NVP-TAE684, PLX4720, "
            "Etoposide.",
        ),
    ] = None,
    model: MODELS = None,
    control: CONTROL = True,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="Methods (repeatable): scfm_scad, scfm_plain, expression_scad, "
            "expression_plain, logistic. Default: all.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds (held-out lines, splits, initialisation).")] = 3,
    adv_weight: Annotated[float, typer.Option(help="λ, the adversarial loss weight.")] = 1.0,
    max_epochs: Annotated[int, typer.Option(help="SCAD epochs (best source-val AUROC kept).")] = 40,
    lr: Annotated[float, typer.Option(help="Learning rate (Adagrad, as SCAD).")] = 1e-3,
    dataset: DATASET = "GDSC1",
    response: RESPONSE = None,
    cell_col: CELL_COL = None,
    drug_col: DRUG_COL = None,
    value_col: VALUE_COL = None,
    value: VALUE = None,
    labels: LABELS = None,
    expression: EXPRESSION = None,
    expression_kind: EXPRESSION_KIND = "auto",
    rule: LABEL_RULE = "threshold",
    z_cut: Z_CUT = 0.5,
    threshold: THRESHOLD = None,
    min_per_class: MIN_PER_CLASS = 10,
    max_genes: MAX_GENES = None,
    target: TARGET = None,
    layer: LAYER = None,
    label_key: LABEL_KEY = None,
    group_key: GROUP_KEY = None,
    test_size: TEST_SIZE = 0.2,
    val_size: VAL_SIZE = 0.2,
    proxy_lines: PROXY_LINES = 5,
    cells_per_line: CELLS_PER_LINE = 40,
    min_gene_overlap: MIN_OVERLAP = 0.5,
    zscore_scale: ZSCORE_SCALE = 2.0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/evaluate/scad"),
    mlflow: LOG_EVALUATION = True,
    device: DEVICE = "auto",
) -> None:
    """Single-cell drug response (SCAD): scfm-SCAD vs raw-expression SCAD vs classifiers without
    adaptation; AUROC / AUPRC over seeds on labelled cells or the proxy target."""
    from scfm.tasks.scad_eval import PAPER_DRUGS, ScadEvaluateConfig, evaluate_scad, markdown_table

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = ScadEvaluateConfig(
        drugs=list(drug) if drug else list(PAPER_DRUGS),
        source=_source(locals()),
        target=_target(locals(), 0),
        seeds=list(range(seeds)),
        methods=list(method) if method else None,
        models=list(model or []),
        control=control,
        head={"adv_weight": adv_weight, "max_epochs": max_epochs, "lr": lr},
        val_size=val_size,
        zscore_scale=zscore_scale,
        output_dir=str(out),
        mlflow=mlflow,
        device=device,
    )
    try:
        with console.status("evaluating SCAD…"):
            result = evaluate_scad(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    for line in result.sources.values():
        console.print(f"source {line}", highlight=False)
    console.print(f"target {result.target}", highlight=False)
    console.print(markdown_table(result.table), highlight=False, markup=False)
    console.print("\n[bold]Results[/bold]")
    for kind, file in result.files.items():
        console.print(f"  {kind:<24} {file.resolve()}")
    if result.run_id:
        console.print(f"  MLflow run               {result.run_id}")


def finetune_scad_command(
    drug: Annotated[str, typer.Option("--drug", help="Drug name (e.g. PLX4720).")],
    input: Annotated[
        str, typer.Option("--input", help="scfm (frozen embeddings) or expression (original).")
    ] = "scfm",
    model: Annotated[
        str, typer.Option(help="Backbone: checkpoint, models:/name/version or random:<preset>.")
    ] = "random:tiny",
    num_samples: NUM_SAMPLES = 8,
    max_epochs: Annotated[int, typer.Option(help="Epochs per trial (ASHA max_t).")] = 40,
    grace_period: GRACE_PERIOD = 8,
    cpus_per_trial: CPUS_PER_TRIAL = 1.0,
    gpus_per_trial: GPUS_PER_TRIAL = 0.0,
    register_as: Annotated[
        str | None, typer.Option(help="Model registry name for the best head.")
    ] = "scfm-scad-head",
    dataset: DATASET = "GDSC1",
    response: RESPONSE = None,
    cell_col: CELL_COL = None,
    drug_col: DRUG_COL = None,
    value_col: VALUE_COL = None,
    value: VALUE = None,
    labels: LABELS = None,
    expression: EXPRESSION = None,
    expression_kind: EXPRESSION_KIND = "auto",
    rule: LABEL_RULE = "threshold",
    z_cut: Z_CUT = 0.5,
    threshold: THRESHOLD = None,
    min_per_class: MIN_PER_CLASS = 10,
    max_genes: MAX_GENES = None,
    target: TARGET = None,
    layer: LAYER = None,
    label_key: LABEL_KEY = None,
    group_key: GROUP_KEY = None,
    test_size: TEST_SIZE = 0.2,
    val_size: VAL_SIZE = 0.2,
    proxy_lines: PROXY_LINES = 5,
    cells_per_line: CELLS_PER_LINE = 40,
    min_gene_overlap: MIN_OVERLAP = 0.5,
    zscore_scale: ZSCORE_SCALE = 2.0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/finetune/scad"),
    device: DEVICE = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the proxy, splits and the sweep.")] = 0,
    smoke_test: Annotated[bool, typer.Option(help="4 trials × 3 epochs.")] = False,
) -> None:
    """Ray Tune sweep of the SCAD head for one drug (lr, λ, widths, batch; ASHA on the source
    validation AUROC; MLflow parent + trial runs); the best head is tested, saved, registered."""
    from scfm.tasks.scad_eval import ScadFinetuneConfig, finetune_scad
    from scfm.tasks.tune import SweepConfig

    if smoke_test:
        num_samples, max_epochs, grace_period = 4, 3, 1
    cfg = ScadFinetuneConfig(
        drug=drug,
        source=_source(locals()),
        target=_target(locals(), seed),
        input=input,
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
            name="scad-sweep",
            run_name=f"scad sweep {drug} ({input})",
        ),
        val_size=val_size,
        seed=seed,
        zscore_scale=zscore_scale,
        output_dir=str(out),
        device=device,
    )
    try:
        result = finetune_scad(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    console.print(f"[bold]best head[/bold] ({input} + SCAD): {result.sweep.best_config}")
    console.print(f"  source {result.source}", highlight=False)
    console.print(f"  target {result.target}", highlight=False)
    t = result.test
    if t:
        console.print(
            f"  test AUROC {t['test_auroc']:.3f}, AUPRC {t['test_auprc']:.3f} "
            f"({int(t['test_n'])} cells)"
        )
    else:
        console.print("  target unlabelled: no test metrics (use `scfm predict scad` on cells)")
    console.print(
        f"  MLflow parent run {result.sweep.parent_run_id} "
        f"({len(result.sweep.trial_run_ids)} trial runs)"
    )
    console.print(f"  model            {result.sweep.model_uri or result.sweep.model_dir}")
    for kind, file in result.files.items():
        console.print(f"  {kind:<16} {file.resolve()}")


def predict_scad_command(
    model: Annotated[
        str,
        typer.Option(
            help="Trained head: the model folder of `scfm finetune scad` or models:/name/version."
        ),
    ],
    h5ad: Annotated[Path, typer.Option("--h5ad", help="Single cells (.h5ad, raw counts).")],
    out: Annotated[
        Path | None,
        typer.Option(help="Output .h5ad (default: <input stem>.scad.h5ad beside the input)."),
    ] = None,
    layer: LAYER = None,
    key: Annotated[str, typer.Option(help="Prefix of the obs columns and the uns entry.")] = "scad",
    group_key: Annotated[
        str | None, typer.Option(help="obs column to summarize the predictions by.")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="scfm model for embedding heads, if the recorded one is not loadable."),
    ] = None,
    device: DEVICE = "auto",
) -> None:
    """Write each cell's predicted sensitivity (obs <key>_sensitivity, <key>_prediction) into a
    copy of the AnnData."""
    import anndata as ad

    from scfm.tasks.scad_eval import predict_scad

    try:
        if not h5ad.exists():
            raise FileNotFoundError(f"{h5ad} does not exist")
        adata = ad.read_h5ad(h5ad)
        with console.status("predicting…"):
            result = predict_scad(
                model,
                adata,
                layer=layer,
                backbone=backbone,
                key_added=key,
                group_key=group_key,
                device=device,
            )
    except USER_ERRORS as exc:
        fail(exc)
    target = out or h5ad.with_name(f"{h5ad.stem}.{key}.h5ad")
    adata.write_h5ad(target)
    console.print(
        f"{result.drug}: {result.n_predicted_sensitive:,} of {result.n_cells:,} cells predicted "
        f"sensitive (P ≥ 0.5); obs columns {', '.join(result.keys.values())}",
        highlight=False,
    )
    if result.n_genes_missing:
        console.print(
            f"  {result.n_genes_missing} model genes are missing in the cells "
            "(entered as the training mean)"
        )
    if result.groups is not None:
        for r in result.groups.itertuples():
            console.print(f"  {r.group}: mean P(sensitive) {r.mean_p_sensitive:.3f} ({r.n_cells})")
    console.print(f"  written to {target.resolve()}")
