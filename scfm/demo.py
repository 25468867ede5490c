"""``scfm demo``: the whole pipeline on the bundled example data, on a laptop, in a few minutes.

1. **inputs** — validate each example file and map its genes onto the vocabulary (report);
2. **corpus** — the Ray Data corpus job over the same files (the scaled file is quarantined);
   a re-run refreshes the corpus and reprocesses nothing that did not change;
3. **pretrain** — a short Ray Train run of the tiny model on that corpus, tracked in MLflow and
   registered in the model registry;
4. **embed** — the new model's embeddings of Kang PBMC, as a UMAP picture;
5. **annotate** — cell-type annotation of Kang PBMC (train on control, test on IFN-β stimulated
   cells): a small Ray Tune sweep of the MLP head on the new model's embeddings, a random-init
   control and the simple baselines, on the same split;
6. **heads** — one short run of each drug / perturbation head (DeepCDR, SCAD, GEARS) with the
   new model against its baselines, at small settings;
7. **summary** — one table of every stage, direct links into the MLflow UI, the ``mlflow ui``
   command.

Each stage is an MLflow run linked to the one before: the corpus build run (the corpus version
logged as an MLflow dataset, the manifest checksum its digest) → the pretraining run (tags
``scfm.corpus_version`` / ``scfm.corpus_run_id``, the same dataset as its input, a logged and
registered model) → evaluation and sweep runs (``scfm.model_uri``, ``scfm.pretrain_run_id``,
``scfm.corpus_version``, ``scfm.corpus_run_id``).

Everything lands under ``out`` (default ``results/demo``): reports, corpus, checkpoints and the
MLflow store (``mlflow.db`` + ``mlartifacts/``) unless ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    """What the demo runs; the defaults take a few minutes on 2 CPU cores.

    :meth:`small` is the test suite's setting: the same stages, fewer steps, trials and epochs.
    """

    out: Path = Path("results/demo")
    model: str = "tiny"
    pretrain_steps: int = 60
    pretrain_workers: int = 2  # Ray Train workers (DDP on CPU)
    register_as: str = "scfm-demo"
    progress: bool = True
    pretrain_overrides: list[str] = field(default_factory=list)
    tune_samples: int = 4  # Ray Tune trials of the annotation head
    tune_epochs: int = 15
    head_epochs: int = 3  # epochs of the DeepCDR / SCAD / GEARS heads
    heads: tuple[str, ...] = ("deepcdr", "scad", "gears")
    umap: bool = True
    ui_url: str = "http://127.0.0.1:5000"

    @classmethod
    def small(cls, out: Path, **kw: Any) -> DemoConfig:
        """Every stage at the smallest settings that still exercise it (tests, notebooks)."""
        base: dict[str, Any] = dict(
            out=out, pretrain_steps=4, tune_samples=2, tune_epochs=2, head_epochs=1, progress=False
        )
        return cls(**(base | kw))


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
    if refresh:
        console.print(f"corpus exists at {output}: refreshing it (only changed inputs are redone)")
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
    if not result.committed:
        n = len(result.changes["unchanged"])
        console.print(
            f"[green]corpus reused[/green]: refresh found nothing to do ({n} data sets "
            f"unchanged, no cell reprocessed); v{result.manifest.corpus_version} is up to date, "
            "no new version committed"
        )
    return result


def pretrain_demo_model(cfg: DemoConfig, corpus: str):
    """Step 3: a short pretraining run of the tiny model, registered in MLflow."""
    from scfm.train.config import PretrainConfig
    from scfm.train.pretrain import run_pretraining

    steps = cfg.pretrain_steps
    every = max(2, steps // 3)  # validation and checkpoints: 3 in a run (each takes seconds)
    pcfg = PretrainConfig.load(
        overrides=[
            f"model={cfg.model}",
            f"data.corpus={corpus}",
            f"scale.num_workers={cfg.pretrain_workers}",
            f"data.micro_batch_size={16 // cfg.pretrain_workers}",
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


def embed_demo_data(cfg: DemoConfig, model_uri: str, console: Console) -> Path | None:
    """Step 4: the demo model's embeddings of Kang PBMC and their UMAP picture."""
    from scfm.plotting import pyplot

    plt = pyplot()

    from scfm.data.io import read_counts
    from scfm.inference import embed
    from scfm.inference.plots import plot_umap

    out = cfg.out / "embeddings"
    out.mkdir(parents=True, exist_ok=True)
    adata = read_counts(resolve("kang2018"))
    emb = embed(adata, model_uri, progress=False, batch_size=64)
    np_path = out / "kang2018_scfm.npy"
    import numpy as np

    np.save(np_path, emb)
    console.print(f"{emb.shape[0]:,} cells → {emb.shape[1]}-dimensional embeddings ({np_path})")
    if not cfg.umap:
        return None
    png = out / "kang2018_umap.png"
    fig = plot_umap(adata, "cell_type", path=str(png))
    plt.close(fig)
    console.print(f"UMAP coloured by cell type: {png}")
    return png


def evaluate_demo_model(cfg: DemoConfig, model_uri: str, console: Console):
    """Step 5: annotation with the demo model (head chosen by a Ray Tune sweep) vs a random-init
    control and the baselines."""
    from scfm.tasks.evaluate import EvaluateConfig, evaluate_annotation
    from scfm.tasks.labelled import SplitConfig

    result = evaluate_annotation(
        EvaluateConfig(
            h5ad=str(resolve("kang2018")),
            label_key="cell_type",
            split=SplitConfig(split_key="condition", train_value="control"),
            models=[model_uri],
            baselines=["pca_lr", "all_genes_lr", "pca_knn"],
            head={"max_epochs": cfg.tune_epochs},
            tune_samples=cfg.tune_samples,
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


def run_heads(cfg: DemoConfig, model_uri: str, console: Console) -> dict[str, Any]:
    """Step 6: one short run of each drug / perturbation head vs its baselines (small settings)."""
    results: dict[str, Any] = {}
    if "deepcdr" in cfg.heads:
        from scfm.tasks.deepcdr_eval import DeepCDREvaluateConfig, DrugDataConfig, evaluate_deepcdr

        with console.status("DeepCDR: drug response of GDSC2 cell lines…"):
            results["deepcdr"] = evaluate_deepcdr(
                DeepCDREvaluateConfig(
                    data=DrugDataConfig(max_cell_lines=30, max_drugs=10, max_genes=200),
                    splits=["random"],
                    models=[model_uri],
                    baselines=["additive", "drug_mean", "ridge"],
                    head={"max_epochs": cfg.head_epochs, "fusion": "mlp"},
                    output_dir=str(cfg.out / "deepcdr"),
                )
            )
        _print_head(console, "DeepCDR (GDSC2, random pairs)", results["deepcdr"].table, "pearson")
    if "scad" in cfg.heads:
        from scfm.tasks.scad_data import ProxyConfig
        from scfm.tasks.scad_eval import (
            ScadEvaluateConfig,
            ScadSourceConfig,
            ScadTargetConfig,
            evaluate_scad,
        )

        with console.status("SCAD: PLX4720 response, bulk lines → single cells…"):
            results["scad"] = evaluate_scad(
                ScadEvaluateConfig(
                    drugs=["PLX4720"],
                    source=ScadSourceConfig(max_genes=200),
                    target=ScadTargetConfig(
                        proxy=ProxyConfig(
                            n_sensitive_lines=3, n_resistant_lines=3, cells_per_line=12
                        )
                    ),
                    seeds=[0],
                    methods=["scfm_scad", "expression_scad", "logistic"],
                    models=[model_uri],
                    head={"max_epochs": cfg.head_epochs, "lr": 0.01},
                    output_dir=str(cfg.out / "scad"),
                )
            )
        _print_head(console, "SCAD (PLX4720, proxy cells)", results["scad"].table, "auroc_mean")
    if "gears" in cfg.heads:
        from scfm.tasks.gears_evaluate import GearsEvaluateConfig, evaluate_gears
        from scfm.tasks.perturb_data import PerturbDataConfig

        with console.status("GEARS: Papalexi 2021 CRISPR screen…"):
            results["gears"] = evaluate_gears(
                GearsEvaluateConfig(
                    data=PerturbDataConfig(h5ad="papalexi2021"),
                    models=[model_uri],
                    seeds=[1],
                    head={"max_epochs": cfg.head_epochs},
                    max_cells_per_condition=40,
                    embed_cells=16,
                    dataset="papalexi2021",
                    output_dir=str(cfg.out / "gears"),
                )
            )
        _print_head(console, "GEARS (Papalexi 2021)", results["gears"].table, "mse_de", low=True)
    return results


def _print_head(console: Console, title: str, table, metric: str, low: bool = False) -> None:
    t = table.sort_values(metric, ascending=low, kind="stable")[["method", "kind", metric]]
    console.print(f"[bold]{title}[/bold] ({metric}, {'lower' if low else 'higher'} is better)")
    console.print(t.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


# ------------------------------------------------------------------------------ summary, links
# task → (metric, higher is better)
PRIMARY = {
    "annotation": ("macro_f1", True),
    "deepcdr": ("pearson", True),
    "scad": ("auroc_mean", True),
    "gears": ("mse_de", False),
}


def summary_table(tables: dict[str, Any]):
    """Per task: the best scfm row, the random-init control and the best baseline."""
    import pandas as pd

    rows = []
    for task, table in tables.items():
        metric, high = PRIMARY[task]
        # kinds read "scfm", "control", "baseline", "gears" or, for SCAD, "scfm, SCAD" …
        family = table["kind"].astype(str).str.split(",").str[0].str.strip()
        groups = {
            "scfm": table[family == "scfm"],
            "control": table[family == "control"],
            "best baseline": table[~family.isin(["scfm", "control"])],
        }
        row: dict[str, Any] = {"task": task, "metric": f"{metric} ({'↑' if high else '↓'})"}
        for name, g in groups.items():
            g = g.dropna(subset=[metric])
            if g.empty:
                row[name], row[f"{name} method"] = float("nan"), ""
                continue
            best = g.loc[g[metric].idxmax() if high else g[metric].idxmin()]
            row[name], row[f"{name} method"] = float(best[metric]), str(best["method"])
        rows.append(row)
    return pd.DataFrame(rows)


def _print_summary(console: Console, summary) -> None:
    from rich.table import Table

    table = Table("task", "metric", "scfm", "random-init control", "best baseline")
    for r in summary.to_dict("records"):
        table.add_row(
            r["task"],
            r["metric"],
            f"{r['scfm']:.3f}",
            f"{r['control']:.3f}",
            f"{r['best baseline']:.3f} ({r['best baseline method']})",
        )
    console.print(table)


def summary_markdown(summary) -> str:
    cols = list(summary.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in summary.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ui_links(base: str, run_ids: dict[str, str], sweep_trials: list[str]) -> dict[str, str]:
    """Direct MLflow UI links: each stage's runs table, its run page, the sweep comparison."""
    from mlflow import MlflowClient

    client = MlflowClient()
    links: dict[str, str] = {}
    for stage, run_id in run_ids.items():
        if not run_id:
            continue
        exp = client.get_run(run_id).info.experiment_id
        links[f"{stage} runs"] = f"{base}/#/experiments/{exp}/runs"
        links[f"{stage} run"] = f"{base}/#/experiments/{exp}/runs/{run_id}"
    if sweep_trials:
        exp = client.get_run(sweep_trials[0]).info.experiment_id
        links["sweep trials compared"] = (
            f"{base}/#/compare-runs?runs={quote(json.dumps(sweep_trials))}"
            f"&experiments={quote(json.dumps([exp]))}"
        )
    return links


@dataclass
class DemoResult:
    """What :func:`run_demo` made: paths, MLflow run ids, UI links, the summary table."""

    files: dict[str, str]
    run_ids: dict[str, str]
    links: dict[str, str]
    summary: Any  # pandas DataFrame
    corpus_reused: bool
    seconds: dict[str, float]

    def items(self):
        """``label → path / URI / command`` of everything to look at (what the CLI prints)."""
        return ({**self.files, **self.links}).items()


def run_demo(cfg: DemoConfig, console: Console) -> DemoResult:
    """All steps; returns what to look at."""

    cfg.out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(cfg.out / 'mlflow.db').resolve()}"
    uri = os.environ["MLFLOW_TRACKING_URI"]
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now

    n = 7
    console.rule(f"[bold]1/{n} inputs: validate and map genes")
    files = map_inputs(cfg, console)
    lap("inputs")

    console.rule(f"[bold]2/{n} corpus: Ray Data build (or refresh)")
    from scfm.runtime import ensure_ray

    ensure_ray()
    built = build_demo_corpus(cfg, console)
    reused = not built.committed
    lap("corpus")

    console.rule(
        f"[bold]3/{n} pretrain: {cfg.model} model, {cfg.pretrain_steps} steps, "
        f"{cfg.pretrain_workers} Ray Train workers"
    )
    trained = pretrain_demo_model(cfg, str(cfg.out / "corpus"))
    m = trained.metrics
    console.print(
        f"step {m.get('step')}: train loss {m.get('loss', float('nan')):.4f}, "
        f"val loss {m.get('val_loss', float('nan')):.4f}, "
        f"read-depth-enhancement MAE {m.get('val_rde_mae', float('nan')):.4f}, "
        f"{m.get('cells_per_s', float('nan')):.0f} cells/s"
    )
    model = trained.model_uri or trained.checkpoint_dir
    lap("pretrain")

    console.rule(f"[bold]4/{n} embed: Kang PBMC with the new model, UMAP")
    umap_png = embed_demo_data(cfg, model, console)
    lap("embed")

    console.rule(f"[bold]5/{n} annotate: Ray Tune sweep ({cfg.tune_samples} trials) vs baselines")
    evaluated = evaluate_demo_model(cfg, model, console)
    lap("annotate")

    console.rule(f"[bold]6/{n} heads: {', '.join(cfg.heads) or 'none'} vs their baselines")
    heads = run_heads(cfg, model, console)
    lap("heads")

    console.rule(f"[bold]7/{n} summary")
    summary = summary_table(
        {"annotation": evaluated.table, **{k: v.table for k, v in heads.items()}}
    )
    summary_md = cfg.out / "summary.md"
    summary.to_csv(cfg.out / "summary.csv", index=False)
    summary_md.write_text(summary_markdown(summary))
    _print_summary(console, summary)

    sweep = next((r.info.get("sweep_run_id") for r in evaluated.methods if r.kind == "scfm"), None)
    trials = _sweep_trials(sweep) if sweep else []
    run_ids = {
        "corpus": built.manifest.mlflow_run_id or "",
        "pretrain": trained.run_id,
        "annotation sweep": sweep or "",
        "annotation": evaluated.run_id or "",
        **{k: v.run_id or "" for k, v in heads.items()},
    }
    links = ui_links(cfg.ui_url, run_ids, trials)
    port = cfg.ui_url.rsplit(":", 1)[-1]
    links["MLflow UI"] = f"mlflow ui --backend-store-uri {uri} --port {port}  →  {cfg.ui_url}"
    lap("summary")
    seconds["total"] = sum(seconds.values())

    out: dict[str, str] = {f"report ({kind})": str(p.resolve()) for kind, p in files.items()}
    out["corpus manifest"] = str(Path(built.manifest_path).resolve())
    out["corpus"] = (
        f"v{built.manifest.corpus_version} (reused: refresh found nothing to do)"
        if reused
        else f"v{built.manifest.corpus_version} ({built.manifest.kind})"
    )
    out["model checkpoint"] = trained.checkpoint_dir
    out["registered model"] = trained.model_uri or "(not registered)"
    if umap_png:
        out["UMAP"] = str(umap_png.resolve())
    out["annotation table"] = str(evaluated.files["comparison_md"].resolve())
    out["annotation plots"] = str(evaluated.files["comparison_png"].parent.resolve())
    for k, v in heads.items():
        out[f"{k} table"] = str(v.files["comparison_md"].resolve())
    out["summary"] = str(summary_md.resolve())
    out["MLflow store"] = uri
    out["wall time"] = f"{seconds['total']:.0f} s"
    return DemoResult(out, run_ids, links, summary, reused, seconds)


def _sweep_trials(parent_run_id: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return [r.info.run_id for r in children]
