"""``scfm demo``: the whole pipeline on the bundled example data, on a laptop, in a few minutes.

1. **inputs** — validate each example file and map its genes onto the vocabulary (report);
2. **corpus** — the Ray Data corpus job over the same files (the scaled file is quarantined);
   a re-run refreshes the corpus and reprocesses nothing that did not change;
3. **pretrain** — a short Ray Train run of the tiny model on that corpus, tracked in MLflow and
   registered in the model registry;
4. **evaluate** — cell-type annotation of Kang PBMC (train on control, test on IFN-β stimulated
   cells) with the new model's embeddings, a random-init control and the simple baselines, on the
   same split.

Everything lands under ``out`` (default ``results/demo``): reports, corpus, checkpoints and the
MLflow store (``mlflow.db`` + ``mlartifacts/``) unless ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

# The example inputs: one of each kind of gene id and file format, plus one data set whose X is
# scaled (not counts), to show the validation error and the corpus quarantine users would get.
DEMO_INPUTS: tuple[tuple[str, str], ...] = (
    ("kang2018", "kang2018"),
    ("pbmc68k", "pbmc68k_counts"),
    ("papalexi2021", "papalexi2021"),
    ("10x-v3.h5", "tenx_v3_h5"),
    ("10x-v3-mtx", "tenx_v3_mex"),
    ("pbmc68k-scaled", "pbmc68k_reduced"),
)
# The corpus takes every input once (the 10x MEX directory holds the same cells as the .h5).
CORPUS_H5AD = ("kang2018", "pbmc68k_counts", "papalexi2021", "pbmc68k_reduced")
CORPUS_TENX = ("tenx_v3_h5",)


@dataclass
class DemoConfig:
    """What the demo runs; the defaults take a few minutes on 2 CPU cores."""

    out: Path = Path("results/demo")
    model: str = "tiny"
    pretrain_steps: int = 60
    register_as: str = "scfm-demo"
    progress: bool = True
    pretrain_overrides: list[str] = field(default_factory=list)


def resolve(resource: str) -> Path:
    from scfm import datasets

    if resource in datasets.DIRECTORIES:
        return datasets.fetch_dir(resource)
    return datasets.fetch(resource)


def map_inputs(cfg: DemoConfig, console: Console) -> dict[str, Path]:
    """Step 1: validation and gene-mapping report of every example input."""
    from scfm.data.genes import GeneVocab
    from scfm.data.report import mapping_table, summarize_input, write_report

    vocab = GeneVocab.load()
    summaries = []
    with console.status("mapping example data sets onto the vocabulary…"):
        for label, resource in DEMO_INPUTS:
            summaries.append(summarize_input(label, resolve(resource), vocab=vocab))
    console.print(mapping_table(summaries))
    for s in summaries:
        if not s.ok:
            console.print(f"[red]{s.name}[/red]: {s.error}", highlight=False)
    return write_report(summaries, cfg.out)


def build_demo_corpus(cfg: DemoConfig, console: Console):
    """Step 2: the corpus job (a refresh when the demo corpus exists already)."""
    from scfm.corpus.build import BuildConfig, summary_rows
    from scfm.corpus.build_report import build_and_log
    from scfm.corpus.cli import print_summary
    from scfm.corpus.sources import H5ADSource, TenXSource

    output = cfg.out / "corpus"
    sources = [
        H5ADSource(paths=[str(resolve(r)) for r in CORPUS_H5AD], name="examples"),
        TenXSource(paths=[str(resolve(r)) for r in CORPUS_TENX], name="10x"),
    ]
    refresh = (output / "manifests").is_dir()
    result = build_and_log(
        BuildConfig(
            output=str(output),
            sources=sources,
            refresh=refresh,
            val_fraction=0.05,
            block_cells=10_000,
            progress=cfg.progress,
            run_name="demo refresh" if refresh else "demo build",
        )
    )
    print_summary(result.manifest, summary_rows(result.manifest), console)
    return result


def pretrain_demo_model(cfg: DemoConfig, corpus: str):
    """Step 3: a short pretraining run of the tiny model, registered in MLflow."""
    from scfm.train.config import PretrainConfig
    from scfm.train.pretrain import run_pretraining

    steps = cfg.pretrain_steps
    every = max(1, steps // 3)
    pcfg = PretrainConfig.load(
        overrides=[
            f"model={cfg.model}",
            f"data.corpus={corpus}",
            "data.micro_batch_size=8",
            "data.val_cells=64",
            "train.global_batch_size=16",
            f"train.max_steps={steps}",
            "train.lr=3e-3",
            f"train.warmup_steps={max(1, steps // 10)}",
            "train.log_every=5",
            f"train.val_every={every}",
            f"train.checkpoint_every={every}",
            f"storage_path={cfg.out / 'ray'}",
            f"tracking.register_as={cfg.register_as}",
            *cfg.pretrain_overrides,
        ]
    )
    return run_pretraining(pcfg)


def evaluate_demo_model(cfg: DemoConfig, model_uri: str, console: Console):
    """Step 4: annotation with the demo model vs a random-init control and the baselines."""
    from scfm.tasks.evaluate import EvaluateConfig, evaluate_annotation
    from scfm.tasks.labelled import SplitConfig

    result = evaluate_annotation(
        EvaluateConfig(
            h5ad=str(resolve("kang2018")),
            label_key="cell_type",
            split=SplitConfig(split_key="condition", train_value="control"),
            models=[model_uri],
            baselines=["pca_lr", "all_genes_lr", "pca_knn"],
            dataset="kang2018 (control → stimulated)",
            output_dir=str(cfg.out / "annotation"),
        )
    )
    table = result.table[["method", "kind", "macro_f1", "accuracy", "seconds"]]
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    console.print(
        "[dim]the demo model saw a few thousand cells for "
        f"{cfg.pretrain_steps} steps: expect the baselines to win[/dim]"
    )
    return result


def run_demo(cfg: DemoConfig, console: Console) -> dict[str, str]:
    """All steps; returns what to look at (label → path, URI or command)."""

    cfg.out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(cfg.out / 'mlflow.db').resolve()}"
    uri = os.environ["MLFLOW_TRACKING_URI"]

    console.rule("[bold]1/4 inputs: validate and map genes")
    files = map_inputs(cfg, console)

    console.rule("[bold]2/4 corpus: Ray Data build (or refresh)")
    from scfm.runtime import ensure_ray

    ensure_ray()
    built = build_demo_corpus(cfg, console)

    console.rule(f"[bold]3/4 pretrain: {cfg.model} model, {cfg.pretrain_steps} steps, Ray Train")
    trained = pretrain_demo_model(cfg, str(cfg.out / "corpus"))
    m = trained.metrics
    console.print(
        f"step {m.get('step')}: train loss {m.get('loss', float('nan')):.4f}, "
        f"val loss {m.get('val_loss', float('nan')):.4f}, "
        f"read-depth-enhancement MAE {m.get('val_rde_mae', float('nan')):.4f}, "
        f"{m.get('cells_per_s', float('nan')):.0f} cells/s"
    )

    console.rule("[bold]4/4 evaluate: cell-type annotation, scfm vs baselines")
    evaluated = evaluate_demo_model(cfg, trained.model_uri or trained.checkpoint_dir, console)

    results = {f"report ({kind})": str(p.resolve()) for kind, p in files.items()}
    results["corpus manifest"] = str(Path(built.manifest_path).resolve())
    results["model checkpoint"] = trained.checkpoint_dir
    results["registered model"] = trained.model_uri or "(not registered)"
    results["annotation table"] = str(evaluated.files["comparison_md"].resolve())
    results["annotation plots"] = str(evaluated.files["comparison_png"].parent.resolve())
    results["MLflow store"] = uri
    results["MLflow UI"] = f"mlflow ui --backend-store-uri {uri}  →  http://127.0.0.1:5000"
    return results
