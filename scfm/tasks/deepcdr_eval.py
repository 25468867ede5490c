"""``scfm evaluate deepcdr`` and ``scfm finetune deepcdr``: the DeepCDR experiment, honestly.

    response + expression + SMILES ──join (report)──► pairs
      │ for each split (random pairs | leave cell lines out | leave drugs out), the same for all:
      ├─► baselines: DeepCDR on raw expression, additive (drug + cell-line means), drug mean,
      │   ridge on expression PCA + drug one-hot / Morgan fingerprint
      └─► each scfm model (+ a random-init control): embed every cell line once (bulk mode,
          frozen) → DeepCDR head on the embedding
      ▼
    comparison.csv / .md, per_drug.csv, per_tissue.csv, predictions.csv, join_report.json,
    splits.json, comparison.png, per_drug.png, per_tissue.png → output dir + one MLflow run
    (experiment ``evaluate``)

Metrics: Pearson, Spearman and RMSE over all test pairs; per drug (≥ 10 test pairs) and the mean
within-drug Pearson; per tissue. Times are wall seconds of fitting and predicting; scfm rows
include the embedding time.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.tasks.drug_data import (
    DEFAULT_ZSCORE_SCALE,
    SPLIT_KINDS,
    DrugDataError,
    DrugResponseData,
    PairSplit,
    PairSplitConfig,
    load_drug_response,
    make_pair_split,
)
from scfm.tasks.metrics import slug
from scfm.tasks.regression import grouped_metrics, regression_metrics
from scfm.tasks.tune import SweepConfig, SweepResult

logger = logging.getLogger(__name__)

BASELINES: dict[str, str] = {
    "deepcdr_expression": "DeepCDR on raw expression",
    "additive": "additive (drug + cell-line effects)",
    "drug_mean": "drug mean",
    "ridge": "ridge on expression PCA + drug",
}


@dataclass
class DrugDataConfig:
    """Which drug-response data to load (see :func:`~scfm.tasks.drug_data.load_drug_response`)."""

    dataset: str = "GDSC2"
    response: str | None = None  # a custom response table instead of the named one
    cell_col: str | None = None
    drug_col: str | None = None
    value_col: str | None = None
    value: str | None = None  # ln_ic50 | ic50_um
    expression: str | None = None  # default: the shared GDSC z-score matrix
    expression_kind: str = "auto"
    smiles: str | None = None
    max_cell_lines: int | None = None
    max_drugs: int | None = None
    max_genes: int | None = None  # top-variance genes (the original DeepCDR used 697)
    seed: int = 0

    def load(self) -> DrugResponseData:
        return load_drug_response(
            self.dataset,
            response=self.response,
            cell_col=self.cell_col,
            drug_col=self.drug_col,
            value_col=self.value_col,
            value=self.value,  # type: ignore[arg-type]
            expression=self.expression,
            expression_kind=self.expression_kind,  # type: ignore[arg-type]
            smiles=self.smiles,
            max_cell_lines=self.max_cell_lines,
            max_drugs=self.max_drugs,
            max_genes=self.max_genes,
            seed=self.seed,
        )


@dataclass
class DeepCDREvaluateConfig:
    """Inputs and options of ``scfm evaluate deepcdr``."""

    data: DrugDataConfig = field(default_factory=DrugDataConfig)
    splits: list[str] = field(default_factory=lambda: list(SPLIT_KINDS))
    test_size: float = 0.1
    val_size: float = 0.1
    seed: int = 0
    models: list[str] = field(default_factory=list)  # --model specs (scfm.tasks.models)
    control: bool = True  # add a random-init model of the first model's architecture
    baselines: list[str] | None = None  # None = all of BASELINES
    head: dict[str, Any] = field(default_factory=dict)  # DeepCDR head options (both branches)
    pool: list[str] = field(default_factory=lambda: ["max_all"])
    zscore_scale: float = DEFAULT_ZSCORE_SCALE
    output_dir: str = "results/evaluate/deepcdr"
    device: str = "auto"
    embed_batch_size: int = 16
    mlflow: bool = True
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MethodRun:
    """One method on one split."""

    split: str
    method: str
    kind: str  # baseline | scfm | control
    predictions: np.ndarray
    seconds: float
    embed_seconds: float = 0.0
    notes: str = ""


@dataclass
class DeepCDREvaluation:
    table: pd.DataFrame  # one row per (split, method)
    per_drug: pd.DataFrame
    per_tissue: pd.DataFrame
    predictions: pd.DataFrame
    splits: dict[str, PairSplit]
    data: DrugResponseData
    files: dict[str, Path]
    run_id: str | None


def check_baselines(names: list[str] | None) -> list[str]:
    if names is None:
        return list(BASELINES)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise DrugDataError(
            f"unknown baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
        )
    return list(names)


def evaluate_deepcdr(
    cfg: DeepCDREvaluateConfig, *, backbones: list | None = None
) -> DeepCDREvaluation:
    """Run every method on the same splits and write the comparison.

    Parameters
    ----------
    backbones
        :class:`~scfm.tasks.models.Backbone` objects already in memory, evaluated before
        ``cfg.models``.
    """
    from scfm.tasks.deepcdr import expression_features, scfm_features
    from scfm.tasks.drug_graph import morgan_fingerprints
    from scfm.tasks.models import backbones_with_control, load_backbone

    baselines = check_baselines(cfg.baselines)
    kinds = list(dict.fromkeys(cfg.splits))
    for kind in kinds:
        if kind not in SPLIT_KINDS:
            raise DrugDataError(f"unknown split {kind!r}; choose from {', '.join(SPLIT_KINDS)}")
    data = cfg.data.load()
    splits = {
        k: make_pair_split(data, PairSplitConfig(k, cfg.test_size, cfg.val_size, cfg.seed))
        for k in kinds
    }
    models = list(backbones or []) + [load_backbone(s, seed=cfg.seed) for s in cfg.models]
    models = backbones_with_control(models, control=cfg.control, seed=cfg.seed)
    expr = expression_features(data)
    fingerprints = morgan_fingerprints(data.smiles) if "ridge" in baselines else None
    features: list[tuple[Any, np.ndarray, float]] = []
    for backbone in models:  # embed every cell line once per model, reused by every split
        logger.info("embedding %d cell lines with %s", len(data.cell_lines), backbone.label)
        emb, seconds = scfm_features(
            data,
            backbone,
            pool=cfg.pool,
            zscore_scale=cfg.zscore_scale,
            batch_size=cfg.embed_batch_size,
            device=cfg.device,
            progress=cfg.progress,
        )
        features.append((backbone, emb, seconds))

    runs: list[MethodRun] = []
    for kind, split in splits.items():
        logger.info("split %s: %s", kind, split.to_dict())
        for name in baselines:
            runs.append(_run_baseline(name, data, split, expr, fingerprints, cfg))
        for backbone, emb, embed_s in features:
            logger.info("%s + DeepCDR on %s", backbone.label, split.description)
            start = time.perf_counter()
            pred, info = _fit_deepcdr(data, split, emb, "scfm", cfg)
            runs.append(
                MethodRun(
                    kind,
                    f"{backbone.label} + DeepCDR",
                    "control" if backbone.is_random else "scfm",
                    pred,
                    time.perf_counter() - start + embed_s,
                    embed_s,
                    info,
                )
            )
    return _write_outputs(cfg, data, splits, runs)


def _fit_deepcdr(
    data: DrugResponseData,
    split: PairSplit,
    cell_features: np.ndarray,
    cell_input: str,
    cfg: DeepCDREvaluateConfig,
) -> tuple[np.ndarray, str]:
    from scfm.tasks.base import fit_head
    from scfm.tasks.deepcdr import DeepCDRData, DeepCDRHead, predict_pairs

    module = DeepCDRData.from_split(data, split, cell_features, cell_input)
    fit = fit_head(
        DeepCDRHead(), module, {"seed": cfg.seed, **cfg.head}, device=cfg.device, progress=False
    )
    pred, _ = predict_pairs(fit.model, module, "test")
    return pred, f"best epoch {fit.best_epoch} of {len(fit.history)}"


def _run_baseline(
    name: str,
    data: DrugResponseData,
    split: PairSplit,
    expr: np.ndarray,
    fingerprints: np.ndarray | None,
    cfg: DeepCDREvaluateConfig,
) -> MethodRun:
    from scfm.tasks.drug_baselines import Additive, DrugMean, RidgeBaseline

    logger.info("baseline %s on %s", name, split.description)
    start = time.perf_counter()
    cell, drug, y = data.cell, data.drug, data.y
    tr, te = split.train, split.test
    if name == "deepcdr_expression":
        pred, notes = _fit_deepcdr(data, split, expr, "expression", cfg)
    elif name in ("additive", "drug_mean"):
        model = (
            Additive(len(data.cell_lines), len(data.drugs))
            if name == "additive"
            else DrugMean(len(data.drugs))
        )
        model.fit(cell[tr], drug[tr], y[tr])
        pred = model.predict(cell[te], drug[te])
        fallbacks = {k: v for k, v in model.fallbacks(cell[te], drug[te]).items() if v}
        notes = "; ".join(
            f"{v} test pairs with {k.replace('_', ' ')}" for k, v in fallbacks.items()
        )
        if fallbacks:
            notes += (
                " → predicted from the other effect and the global mean"
                if name == "additive"
                else " → global training mean"
            )
    else:  # ridge
        assert fingerprints is not None
        unseen = bool(np.setdiff1d(drug[te], drug[tr]).size)
        model = RidgeBaseline(seed=cfg.seed).fit(
            cell[tr], drug[tr], y[tr], expr, fingerprints, use_fingerprints=unseen
        )
        pred = model.predict(cell[te], drug[te])
        notes = f"drug features: {model.drug_features}"
    return MethodRun(
        split.config.kind, BASELINES[name], "baseline", pred, time.perf_counter() - start, 0, notes
    )


# ------------------------------------------------------------------------------ outputs
def _tables(data: DrugResponseData, splits: dict[str, PairSplit], runs: list[MethodRun]):
    rows, per_drug, per_tissue, preds = [], [], [], []
    drug_names = np.asarray(data.drug_names, dtype=object)
    for kind, split in splits.items():
        te = split.test
        y = data.y[te]
        frame = pd.DataFrame(
            {
                "split": kind,
                "cell_line": np.asarray(data.cell_lines, dtype=object)[data.cell[te]],
                "drug": drug_names[data.drug[te]],
                "tissue": data.tissue[data.cell[te]],
                "ln_ic50": y,
            }
        )
        for r in (r for r in runs if r.split == kind):
            m = regression_metrics(y, r.predictions, data.drug[te])
            rows.append(
                {
                    "dataset": data.dataset,
                    "split": kind,
                    "method": r.method,
                    "kind": r.kind,
                    "pearson": m.pearson,
                    "spearman": m.spearman,
                    "rmse": m.rmse,
                    "within_drug_pearson": m.within_drug_pearson,
                    "n_drugs_scored": m.n_drugs_scored,
                    "n_test": m.n,
                    "seconds": r.seconds,
                    "embed_seconds": r.embed_seconds,
                    "notes": r.notes,
                }
            )
            for out, groups in ((per_drug, frame["drug"]), (per_tissue, frame["tissue"])):
                g = grouped_metrics(y, r.predictions, groups.to_numpy())
                g.insert(0, "method", r.method)
                g.insert(0, "split", kind)
                out.append(g)
            frame[r.method] = r.predictions
        preds.append(frame)
    return (
        pd.DataFrame(rows),
        pd.concat(per_drug, ignore_index=True),
        pd.concat(per_tissue, ignore_index=True),
        pd.concat(preds, ignore_index=True),
    )


def markdown_table(table: pd.DataFrame) -> str:
    """One Markdown table per split, best Pearson first."""
    out = []
    for split, t in table.groupby("split", sort=False):
        t = t.sort_values("pearson", ascending=False, kind="stable")
        out += [
            f"**{split}** ({int(t['n_test'].iloc[0]):,} test pairs)",
            "",
            "| method | kind | Pearson | Spearman | RMSE | within-drug Pearson | time (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r.method} | {r.kind} | {r.pearson:.3f} | {r.spearman:.3f} | {r.rmse:.3f} | "
            f"{r.within_drug_pearson:.3f} | {r.seconds:.1f} |"
            for r in t.itertuples()
        ]
        out.append("")
    return "\n".join(out)


def additive_verdicts(table: pd.DataFrame, tolerance: float = 0.005) -> list[str]:
    """Per split, in words: does the additive baseline match (within ``tolerance`` Pearson) or
    beat the best other method?"""
    lines = []
    additive = BASELINES["additive"]
    for split, t in table.groupby("split", sort=False):
        t = t.set_index("method")
        if additive not in t.index or not np.isfinite(t.loc[additive, "pearson"]):
            continue
        a = float(t.loc[additive, "pearson"])
        others = t.drop(index=additive)["pearson"].dropna()
        if others.empty:
            continue
        best, b = others.idxmax(), float(others.max())
        verdict = "beats" if a > b + tolerance else "matches" if a >= b - tolerance else "loses to"
        lines.append(
            f"{split}: the additive baseline (Pearson {a:.3f}) {verdict} the best other "
            f"method, {best} ({b:.3f})"
        )
    return lines


def _write_outputs(
    cfg: DeepCDREvaluateConfig,
    data: DrugResponseData,
    splits: dict[str, PairSplit],
    runs: list[MethodRun],
) -> DeepCDREvaluation:
    import matplotlib.pyplot as plt

    from scfm.tasks.drug_plots import comparison_figure, per_drug_figure, per_tissue_figure

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, per_drug, per_tissue, preds = _tables(data, splits, runs)
    files = {
        "comparison_csv": out / "comparison.csv",
        "comparison_md": out / "comparison.md",
        "per_drug_csv": out / "per_drug.csv",
        "per_tissue_csv": out / "per_tissue.csv",
        "predictions_csv": out / "predictions.csv",
        "join_report_json": out / "join_report.json",
        "splits_json": out / "splits.json",
        "comparison_png": out / "comparison.png",
        "per_drug_png": out / "per_drug.png",
        "per_tissue_png": out / "per_tissue.png",
    }
    table.to_csv(files["comparison_csv"], index=False)
    per_drug.rename(columns={"group": "drug"}).to_csv(files["per_drug_csv"], index=False)
    per_tissue.rename(columns={"group": "tissue"}).to_csv(files["per_tissue_csv"], index=False)
    preds.to_csv(files["predictions_csv"], index=False)
    files["join_report_json"].write_text(json.dumps(data.report.to_dict(), indent=2) + "\n")
    files["splits_json"].write_text(
        json.dumps({k: s.to_dict() | {"held_out": s.held_out} for k, s in splits.items()}, indent=2)
        + "\n"
    )
    title = f"DeepCDR on {data.dataset}: {data.n_pairs:,} pairs"
    notes = [
        f"# DeepCDR: {data.dataset}",
        "",
        *[f"- {line}" for line in data.report.lines()],
        f"- expression: {data.expression.source} ({data.expression.kind}), "
        f"{data.expression.values.shape[1]:,} genes, {data.expression.n_genes_mapped:,} in the "
        "scfm vocabulary",
        *[f"- {line}" for line in additive_verdicts(table)],
        "",
        markdown_table(table),
        "## Notes per method",
        "",
        *[f"- {r.split} / {r.method}: {r.notes}" for r in runs if r.notes],
        "",
    ]
    files["comparison_md"].write_text("\n".join(notes))
    figs = {
        "comparison_png": comparison_figure(table, title),
        "per_drug_png": per_drug_figure(per_drug, f"per-drug Pearson, {data.dataset}"),
        "per_tissue_png": per_tissue_figure(per_tissue, f"per-tissue Pearson, {data.dataset}"),
    }
    for key, fig in figs.items():
        fig.savefig(files[key], dpi=110)
        plt.close(fig)
    run_id = _log_mlflow(cfg, data, table, files) if cfg.mlflow else None
    return DeepCDREvaluation(table, per_drug, per_tissue, preds, splits, data, files, run_id)


def _log_mlflow(
    cfg: DeepCDREvaluateConfig, data: DrugResponseData, table: pd.DataFrame, files
) -> str:
    import mlflow

    from scfm.tracking import log_params_flat, start_run

    with start_run(
        "evaluate",
        run_name=f"deepcdr {data.dataset}",
        tags={"scfm.task": "deepcdr", "scfm.dataset": data.dataset},
        lineage=cfg.models,
    ) as run:
        log_params_flat({"evaluate": cfg.to_dict()})
        metrics = {
            "data.n_pairs": data.n_pairs,
            "data.n_cell_lines": len(data.cell_lines),
            "data.n_drugs": len(data.drugs),
        }
        for r in table.itertuples():
            key = f"{r.split}.{slug(r.method)}"
            for name in ("pearson", "spearman", "rmse", "within_drug_pearson", "seconds"):
                metrics[f"{key}.{name}"] = getattr(r, name)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for path in files.values():
            mlflow.log_artifact(str(path), "evaluation")
        return run.info.run_id


# ------------------------------------------------------------------------------ finetune
@dataclass
class DeepCDRFinetuneConfig:
    """Inputs and options of ``scfm finetune deepcdr``."""

    data: DrugDataConfig = field(default_factory=DrugDataConfig)
    split: PairSplitConfig = field(default_factory=PairSplitConfig)
    cell_input: str = "scfm"  # scfm (frozen embedding of the bulk profile) | expression
    model: str = "random:tiny"  # backbone of the scfm branch
    sweep: SweepConfig = field(default_factory=SweepConfig)
    pool: list[str] = field(default_factory=lambda: ["max_all"])
    zscore_scale: float = DEFAULT_ZSCORE_SCALE
    output_dir: str = "results/finetune/deepcdr"
    device: str = "auto"
    embed_batch_size: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeepCDRFinetuneResult:
    sweep: SweepResult
    test: dict[str, float]
    cell_input: str
    files: dict[str, Path]


def finetune_deepcdr(cfg: DeepCDRFinetuneConfig) -> DeepCDRFinetuneResult:
    """Ray Tune sweep of the DeepCDR head on one split; the best head is tested and registered."""
    import mlflow

    from scfm.tasks.base import load_head
    from scfm.tasks.deepcdr import (
        DeepCDRData,
        DeepCDRHead,
        expression_features,
        predict_pairs,
        scfm_features,
    )
    from scfm.tasks.models import load_backbone
    from scfm.tasks.tune import run_sweep
    from scfm.tracking import tracking_uri

    if cfg.cell_input not in ("scfm", "expression"):
        raise DrugDataError(f"cell_input must be 'scfm' or 'expression', got {cfg.cell_input!r}")
    data = cfg.data.load()
    split = make_pair_split(data, cfg.split)
    label = "raw expression"
    if cfg.cell_input == "scfm":
        backbone = load_backbone(cfg.model, seed=cfg.split.seed)
        label = backbone.label
        features, _ = scfm_features(
            data,
            backbone,
            pool=cfg.pool,
            zscore_scale=cfg.zscore_scale,
            batch_size=cfg.embed_batch_size,
            device=cfg.device,
        )
    else:
        features = expression_features(data)
    module = DeepCDRData.from_split(data, split, features, cfg.cell_input)
    head = DeepCDRHead()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = run_sweep(
        head,
        module,
        cfg.sweep,
        output_dir=out / "model",
        lineage=[str(cfg.model)],
        tags={
            "scfm.dataset": data.dataset,
            "scfm.backbone": label,
            "scfm.split": split.description,
        },
        params={
            "data": asdict(cfg.data) | {"split": split.to_dict()},
            "cell_input": {"kind": cfg.cell_input, "backbone": label, "pool": cfg.pool},
        },
    )
    model, _ = load_head(sweep.model_dir, head)
    pred, y = predict_pairs(model, module, "test")
    te = split.test
    m = regression_metrics(y, pred, data.drug[te])
    test = {f"test_{k}": float(v) for k, v in m.to_dict().items()}
    files = {
        "predictions_csv": out / "test_predictions.csv",
        "metrics_json": out / "test_metrics.json",
        "trials_csv": out / "trials.csv",
        "join_report_json": out / "join_report.json",
    }
    pd.DataFrame(
        {
            "cell_line": np.asarray(data.cell_lines, dtype=object)[data.cell[te]],
            "drug": np.asarray(data.drug_names, dtype=object)[data.drug[te]],
            "ln_ic50": y,
            "prediction": pred,
        }
    ).to_csv(files["predictions_csv"], index=False)
    sweep.trials.to_csv(files["trials_csv"], index=False)
    files["join_report_json"].write_text(json.dumps(data.report.to_dict(), indent=2) + "\n")
    summary = {
        "dataset": data.dataset,
        "cell_input": cfg.cell_input,
        "backbone": label,
        **test,
        "best_config": sweep.best_config,
        "model_uri": sweep.model_uri,
        "split": split.to_dict(),
    }
    files["metrics_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=sweep.parent_run_id):
        mlflow.log_metrics({k: v for k, v in test.items() if np.isfinite(v)})
        for key in ("predictions_csv", "metrics_json", "join_report_json"):
            mlflow.log_artifact(str(files[key]), "test")
    return DeepCDRFinetuneResult(sweep, test, label, files)
