"""``scfm evaluate | finetune | predict scad``: the SCAD experiment and a trained head's use.

    GDSC IC50 of a drug ──binarize (LabelRule)──► labelled source lines
    target: a user's AnnData of single cells (labels for evaluation) or the proxy target
      │ for each seed (proxy: other held-out lines; always: other splits and initialisations)
      ├─► raw expression (shared genes): SCAD (λ > 0), the same network with λ = 0, logistic
      │   regression
      └─► each scfm model (+ a random-init control): frozen embeddings (bulk mode for the lines,
          raw counts for the cells; pool S, T, max, mean) → SCAD, and λ = 0
      ▼
    comparison.csv / .md (AUROC, AUPRC mean ± SD over seeds), per_seed.csv, predictions.csv,
    auroc.png, sensitivity.png → output dir + one MLflow run (experiment ``evaluate``)

``finetune_scad`` runs a Ray Tune sweep (``run_sweep``: MLflow parent + child runs) of one
input on one drug and saves a head that ``predict_scad`` applies to any AnnData of single cells.
Target labels are used only to score: never in training, epoch or trial selection.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.tasks.drug_data import (
    DEFAULT_ZSCORE_SCALE,
    CellLineExpression,
    expression_from,
    top_variance_genes,
)
from scfm.tasks.metrics import average_precision, binary_auroc, slug
from scfm.tasks.scad_data import (
    CLASSES,
    MIN_GENE_OVERLAP,
    MIN_PER_CLASS,
    MIN_SHARED_GENES,
    LabelRule,
    ProxyConfig,
    ScadDataError,
    SourceData,
    TargetData,
    cell_expression_features,
    check_gene_overlap,
    load_source,
    make_proxy_target,
    source_expression_features,
    stratified_split,
    target_from_anndata,
)
from scfm.tasks.tune import SweepConfig, SweepResult

logger = logging.getLogger(__name__)

POOL: tuple[str, ...] = ("S", "T", "max", "mean")  # the paper's pool "all": 4 × hidden
METHODS: dict[str, str] = {
    "scfm_scad": "SCAD",
    "scfm_plain": "classifier (λ = 0)",
    "expression_scad": "raw expression + SCAD",
    "expression_plain": "raw expression + classifier (λ = 0)",
    "logistic": "logistic regression on raw expression",
}
PAPER_DRUGS = ("Sorafenib", "NVP-TAE684", "PLX4720", "Etoposide")


# ------------------------------------------------------------------------------ configs
@dataclass
class ScadSourceConfig:
    """Where the labelled bulk lines come from (see :func:`~scfm.tasks.scad_data.load_source`)."""

    dataset: str = "GDSC1"
    response: str | None = None  # a custom response table instead of the named one
    cell_col: str | None = None
    drug_col: str | None = None
    value_col: str | None = None
    value: str | None = None  # ln_ic50 | ic50_um
    labels: str | None = None  # the user's own labels (cell_line, label[, drug])
    expression: str | None = None  # default: the shared GDSC z-score matrix
    expression_kind: str = "auto"
    rule: str = "threshold"  # threshold (GDSC binarization) | zscore
    z_cut: float = 0.5
    threshold: float | None = None  # a fixed ln IC50 cut for the threshold rule
    min_per_class: int = MIN_PER_CLASS
    max_genes: int | None = None  # top-variance genes over all expression lines

    def load_expression(self) -> CellLineExpression:
        expr = expression_from(self.expression, kind=self.expression_kind)  # type: ignore[arg-type]
        return top_variance_genes(expr, self.max_genes) if self.max_genes else expr

    def load(self, drug: str, expression: CellLineExpression | None = None) -> SourceData:
        return load_source(
            drug,
            self.dataset,
            response=self.response,
            cell_col=self.cell_col,
            drug_col=self.drug_col,
            value_col=self.value_col,
            value=self.value,  # type: ignore[arg-type]
            labels=self.labels,
            expression=expression if expression is not None else self.load_expression(),
            rule=LabelRule(self.rule, self.z_cut, self.threshold),  # type: ignore[arg-type]
            min_per_class=self.min_per_class,
        )


@dataclass
class ScadTargetConfig:
    """The single cells: a user's AnnData (``h5ad``) or, when None, the proxy target."""

    h5ad: str | None = None
    layer: str | None = None
    label_key: str | None = None  # obs column: sensitive / resistant (evaluation only)
    group_key: str | None = None  # obs column for the prediction plots (default label_key)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    test_size: float = 0.2  # labelled cells held out for scoring (the rest adapt, unlabelled)
    min_gene_overlap: float = MIN_GENE_OVERLAP
    min_shared_genes: int = MIN_SHARED_GENES

    def load(self) -> TargetData | None:
        if self.h5ad is None:
            return None
        return target_from_anndata(
            self.h5ad, layer=self.layer, label_key=self.label_key, group_key=self.group_key
        )


@dataclass
class ScadEvaluateConfig:
    """Inputs and options of ``scfm evaluate scad``."""

    drugs: list[str] = field(default_factory=lambda: list(PAPER_DRUGS))
    source: ScadSourceConfig = field(default_factory=ScadSourceConfig)
    target: ScadTargetConfig = field(default_factory=ScadTargetConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] | None = None  # None = all of METHODS
    models: list[str] = field(default_factory=list)  # --model specs (scfm.tasks.models)
    control: bool = True  # add a random-init model of the first model's architecture
    head: dict[str, Any] = field(default_factory=dict)  # SCAD options (adv_weight, epochs, …)
    val_size: float = 0.2  # source lines held out for epoch selection
    zscore_scale: float = DEFAULT_ZSCORE_SCALE
    output_dir: str = "results/evaluate/scad"
    device: str = "auto"
    embed_batch_size: int = 32
    mlflow: bool = True
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ inputs
@dataclass
class ScadInputs:
    """Both domains in one feature space, and what a saved head needs to rebuild it."""

    source_x: np.ndarray
    target_x: np.ndarray
    kind: str  # expression | scfm
    extra: dict[str, Any]
    seconds: float = 0.0  # embedding time


class EmbeddingCache:
    """scfm embeddings of cell lines, computed once per line (all drugs share the matrix)."""

    def __init__(self, backbone, cfg: ScadEvaluateConfig | ScadFinetuneConfig) -> None:
        self.backbone, self.cfg = backbone, cfg
        self.rows: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def lines(self, expr: CellLineExpression) -> np.ndarray:
        from scfm.tasks.drug_data import embed_expression

        todo = [k for k in expr.cell_lines if k not in self.rows]
        if todo:
            logger.info("embedding %d cell lines with %s", len(todo), self.backbone.label)
            emb, seconds = embed_expression(
                expr.subset(todo),
                self.backbone,
                pool=POOL,
                zscore_scale=self.cfg.zscore_scale,
                batch_size=self.cfg.embed_batch_size,
                device=self.cfg.device,
                progress=self.cfg.progress,
            )
            self.rows.update(zip(todo, emb, strict=True))
            self.seconds += seconds
        return np.stack([self.rows[k] for k in expr.cell_lines])


def embed_target(
    target: TargetData, backbone, *, batch_size: int = 32, device: str = "auto"
) -> tuple[np.ndarray, float]:
    """scfm embeddings of the target cells from their raw counts (default input mode, pool
    S, T, max, mean); also stored in ``target.adata.obsm["X_scfm"]``."""
    from scfm.inference import embed

    start = time.perf_counter()
    emb = embed(
        target.adata,
        getattr(backbone, "model", backbone),
        layer=target.layer,
        pool=POOL,
        batch_size=batch_size,
        device=device,
        progress=False,
        key_added="X_scfm",
    )
    return emb, time.perf_counter() - start


def _gene_check(source: SourceData, target: TargetData, tcfg: ScadTargetConfig) -> np.ndarray:
    return check_gene_overlap(
        source.expression.values.columns,
        target,
        min_fraction=tcfg.min_gene_overlap,
        min_genes=tcfg.min_shared_genes,
    )


def expression_inputs(source: SourceData, target: TargetData, tcfg: ScadTargetConfig) -> ScadInputs:
    """Raw expression of both domains on their shared vocabulary genes."""
    from scfm.data.genes import GeneVocab

    genes = _gene_check(source, target, tcfg)
    kind = source.expression.kind
    names = np.asarray(GeneVocab.load().names, dtype=object)[genes].tolist()
    return ScadInputs(
        source_expression_features(source, genes),
        cell_expression_features(target.X, target.mapping, genes, kind),
        "expression",
        {"genes": names, "expression_kind": kind},
    )


def scfm_inputs(
    source: SourceData,
    target: TargetData,
    tcfg: ScadTargetConfig,
    cache: EmbeddingCache,
    target_emb: np.ndarray | None = None,
) -> ScadInputs:
    """Frozen scfm embeddings: source lines in bulk mode, target cells from raw counts."""
    _gene_check(source, target, tcfg)
    before = cache.seconds
    xs = cache.lines(source.expression)
    seconds = cache.seconds - before
    if target_emb is None:
        target_emb, t_seconds = embed_target(
            target, cache.backbone, batch_size=cache.cfg.embed_batch_size, device=cache.cfg.device
        )
        seconds += t_seconds
    b = cache.backbone
    extra = {
        "genes": [str(g) for g in source.expression.values.columns],
        "backbone": b.source,
        "backbone_label": b.label,
        "backbone_seed": int(b.metadata.get("seed", 0)),
        "pool": list(POOL),
        "zscore_scale": cache.cfg.zscore_scale,
    }
    return ScadInputs(xs, np.asarray(target_emb, dtype=np.float32), "scfm", extra, seconds)


def scad_data(
    inputs: ScadInputs,
    source: SourceData,
    target: TargetData,
    *,
    val_size: float,
    test_size: float,
    seed: int,
    drug_info: dict[str, Any] | None = None,
):
    """The :class:`~scfm.tasks.scad.SCADData` of one seed: source lines split train / val
    (stratified), labelled target cells split adapt / test (all cells adapt when unlabelled)."""
    from scfm.tasks.scad import SCADData

    train, val = stratified_split(source.labels, val_size, seed)
    if target.labels is not None and target.labelled.any():
        adapt, test = stratified_split(target.labels, test_size, seed)
        y = target.labels.astype(np.float32)
    else:
        adapt, test, y = np.arange(target.n_cells), np.zeros(0, dtype=np.int64), None
    return SCADData(
        np.ascontiguousarray(inputs.source_x, dtype=np.float32),
        source.labels.astype(np.float32),
        np.ascontiguousarray(inputs.target_x, dtype=np.float32),
        y,
        {"train": train, "val": val, "adapt": adapt, "test": test},
        inputs.kind,
        extra={**inputs.extra, **(drug_info or {})},
    )


def drug_info(source: SourceData) -> dict[str, Any]:
    """What a saved head records about its labels."""
    return {
        "drug": source.drug,
        "dataset": source.dataset,
        "label_rule": source.rule,
        "n_sensitive_lines": source.n_sensitive,
        "n_resistant_lines": source.n_resistant,
    }


# ------------------------------------------------------------------------------ evaluate
@dataclass
class MethodResult:
    """One method on one drug and seed."""

    drug: str
    seed: int
    method: str
    kind: str  # scad | plain | baseline, and scfm / control / expression
    p_test: np.ndarray  # predicted P(sensitive) of the test cells
    seconds: float
    embed_seconds: float = 0.0
    best_epoch: int = 0
    domain_auroc: float = float("nan")  # the discriminator at the kept epoch (validation)


@dataclass
class ScadEvaluation:
    table: pd.DataFrame  # one row per (drug, method): AUROC / AUPRC mean ± SD over seeds
    per_seed: pd.DataFrame
    predictions: pd.DataFrame  # every test cell, method and seed
    sources: dict[str, str]  # drug → source summary
    target: str  # what the target is (the proxy named as such)
    files: dict[str, Path]
    run_id: str | None


def check_methods(names: list[str] | None) -> list[str]:
    if names is None:
        return list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ScadDataError(
            f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )
    return list(dict.fromkeys(names))


def fit_scad(data, head_config: dict[str, Any], seed: int, device: str):
    """Train one SCAD network; returns the fit and the test cells' P(sensitive)."""
    from scfm.tasks.base import fit_head
    from scfm.tasks.scad import SCADHead, predict_proba

    fit = fit_head(SCADHead(), data, {**head_config, "seed": seed}, device=device)
    x, _ = data.xy("test")
    return fit, predict_proba(fit.model, x)


def logistic_baseline(data, seed: int) -> np.ndarray:
    """Logistic regression (class-balanced, features standardized on training lines) fitted on
    the source lines only: the plain classifier without any target information."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xs, ys = data.source_x[data.rows["train"]], data.source_y[data.rows["train"]]
    scaler = StandardScaler().fit(xs)
    clf = LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(xs), ys)
    x, _ = data.xy("test")
    return clf.predict_proba(scaler.transform(np.nan_to_num(x)))[:, 1]


def evaluate_scad(cfg: ScadEvaluateConfig, *, backbones: list | None = None) -> ScadEvaluation:
    """Every method on every drug and seed, scored on the target's held-out labelled cells.

    Parameters
    ----------
    backbones
        :class:`~scfm.tasks.models.Backbone` objects already in memory (e.g. briefly trained),
        evaluated before ``cfg.models``.

    Raises
    ------
    ScadDataError
        Unknown drug or method, too few labelled lines, unmatched genes, unlabelled target.
    """
    from scfm.tasks.models import backbones_with_control, load_backbone

    methods = check_methods(cfg.methods)
    if not cfg.drugs or not cfg.seeds:
        raise ScadDataError("give at least one drug (--drug) and one seed (--seeds)")
    user_target = cfg.target.load()
    if user_target is not None:
        user_target.require_labels("evaluating SCAD")
    expr = cfg.source.load_expression()
    sources = {d: cfg.source.load(d, expr) for d in cfg.drugs}  # fail early on any bad drug
    scfm_methods = [m for m in methods if m.startswith("scfm_")]
    models = []
    if scfm_methods:
        models = list(backbones or []) + [load_backbone(s, seed=0) for s in cfg.models]
        models = backbones_with_control(models, control=cfg.control, seed=0)
    caches = [EmbeddingCache(b, cfg) for b in models]
    user_emb: dict[int, np.ndarray] = {}
    results: list[MethodResult] = []
    frames: list[pd.DataFrame] = []
    head_cfg = dict(cfg.head)
    target_name = ""
    for drug, full in sources.items():
        for seed in cfg.seeds:
            if user_target is None:
                source, target = make_proxy_target(
                    full,
                    replace(cfg.target.proxy, seed=seed),
                    min_per_class=cfg.source.min_per_class,
                )
            else:
                source, target = full, user_target
            target_name = target.name
            target.require_labels("evaluating SCAD")
            logger.info("%s, seed %d: %s; target %s", drug, seed, source.summary(), target.name)
            inputs: dict[str, tuple[ScadInputs, Any]] = {}
            if any(m.startswith("expression_") or m == "logistic" for m in methods):
                inputs["expression"] = (expression_inputs(source, target, cfg.target), None)
            for i, cache in enumerate(caches):
                pre = user_emb.get(i) if user_target is not None else None
                inp = scfm_inputs(source, target, cfg.target, cache, pre)
                if user_target is not None:
                    user_emb[i] = inp.target_x
                inputs[f"scfm{i}"] = (inp, cache.backbone)
            first = None
            for key, (inp, backbone) in inputs.items():
                data = scad_data(
                    inp,
                    source,
                    target,
                    val_size=cfg.val_size,
                    test_size=cfg.target.test_size,
                    seed=seed,
                )
                first = first if first is not None else data
                wanted = (
                    [m for m in methods if m.startswith("expression_") or m == "logistic"]
                    if key == "expression"
                    else scfm_methods
                )
                for m in wanted:
                    results.append(
                        _run_method(m, data, inp, backbone, head_cfg, drug, seed, cfg.device)
                    )
            frames.append(_test_frame(first, target, drug, seed))
    return _write_outputs(cfg, sources, target_name, results, frames)


def _run_method(
    method: str, data, inp: ScadInputs, backbone, head_cfg, drug: str, seed: int, device: str
) -> MethodResult:
    start = time.perf_counter()
    name = METHODS[method]
    if backbone is not None:
        name = f"{backbone.label} + {name}"
    kind = "control" if backbone is not None and backbone.is_random else inp.kind
    if method == "logistic":
        p = logistic_baseline(data, seed)
        return MethodResult(drug, seed, name, f"{kind}, baseline", p, time.perf_counter() - start)
    adv = 0.0 if method.endswith("_plain") else float(head_cfg.get("adv_weight", 1.0))
    fit, p = fit_scad(data, {**head_cfg, "adv_weight": adv}, seed, device)
    return MethodResult(
        drug,
        seed,
        name,
        f"{kind}, {'plain' if adv == 0 else 'SCAD'}",
        p,
        time.perf_counter() - start + inp.seconds,
        inp.seconds,
        fit.best_epoch,
        float(fit.best_metrics.get("val_domain_auroc", np.nan)) if adv > 0 else float("nan"),
    )


def _test_frame(data, target: TargetData, drug: str, seed: int) -> pd.DataFrame:
    test = data.rows["test"]
    return pd.DataFrame(
        {
            "drug": drug,
            "seed": seed,
            "cell": np.asarray(target.adata.obs_names, dtype=object)[test],
            "group": target.groups[test],
            "label": np.asarray(CLASSES, dtype=object)[target.labels[test].astype(np.int64)],
        }
    )


# ------------------------------------------------------------------------------ outputs
def _tables(results: list[MethodResult], frames: list[pd.DataFrame]):
    rows, preds = [], []
    frame_of = {(f["drug"].iloc[0], int(f["seed"].iloc[0])): f for f in frames}
    for r in results:
        f = frame_of[(r.drug, r.seed)]
        y = (f["label"] == CLASSES[1]).to_numpy(np.float64)
        rows.append(
            {
                "drug": r.drug,
                "seed": r.seed,
                "method": r.method,
                "kind": r.kind,
                "auroc": binary_auroc(y, r.p_test),
                "auprc": average_precision(y, r.p_test),
                "n_test": int(y.size),
                "n_test_sensitive": int(y.sum()),
                "seconds": r.seconds,
                "embed_seconds": r.embed_seconds,
                "best_epoch": r.best_epoch,
                "domain_auroc": r.domain_auroc,
            }
        )
        preds.append(f.assign(method=r.method, p_sensitive=r.p_test))
    per_seed = pd.DataFrame(rows)
    g = per_seed.groupby(["drug", "method"], sort=False)
    table = g.agg(
        kind=("kind", "first"),
        auroc_mean=("auroc", "mean"),
        auroc_sd=("auroc", "std"),
        auprc_mean=("auprc", "mean"),
        auprc_sd=("auprc", "std"),
        n_seeds=("seed", "nunique"),
        n_test=("n_test", "mean"),
        seconds=("seconds", "mean"),
        domain_auroc=("domain_auroc", "mean"),
    ).reset_index()
    return table, per_seed, pd.concat(preds, ignore_index=True)


def _pm(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "")


def markdown_table(table: pd.DataFrame) -> str:
    """One Markdown table: drugs in order, methods by mean AUROC."""
    out = [
        "| drug | method | AUROC | AUPRC | seeds | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for drug, t in table.groupby("drug", sort=False):
        t = t.sort_values("auroc_mean", ascending=False, kind="stable")
        out += [
            f"| {drug} | {r.method} | {_pm(r.auroc_mean, r.auroc_sd)} | "
            f"{_pm(r.auprc_mean, r.auprc_sd)} | {r.n_seeds} | {r.seconds:.1f} |"
            for r in t.itertuples()
        ]
    return "\n".join(out)


def _write_outputs(
    cfg: ScadEvaluateConfig,
    sources: dict[str, SourceData],
    target_name: str,
    results: list[MethodResult],
    frames: list[pd.DataFrame],
) -> ScadEvaluation:
    import matplotlib.pyplot as plt

    from scfm.tasks.drug_plots import auroc_figure, sensitivity_figure

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, per_seed, preds = _tables(results, frames)
    files = {
        "comparison_csv": out / "comparison.csv",
        "comparison_md": out / "comparison.md",
        "per_seed_csv": out / "per_seed.csv",
        "predictions_csv": out / "predictions.csv",
        "auroc_png": out / "auroc.png",
        "sensitivity_png": out / "sensitivity.png",
        "sensitivity_by_group_png": out / "sensitivity_by_group.png",
    }
    table.to_csv(files["comparison_csv"], index=False)
    per_seed.to_csv(files["per_seed_csv"], index=False)
    preds.to_csv(files["predictions_csv"], index=False)
    summaries = {d: s.summary() for d, s in sources.items()}
    proxy = cfg.target.h5ad is None
    where = f"proxy target — {target_name}" if proxy else target_name
    lines = [
        f"# SCAD: {', '.join(sources)} on {where}",
        "",
        *[f"- source {s}" for s in summaries.values()],
        f"- target: {where}; {cfg.target.test_size:.0%} of its labelled cells scored per seed, "
        "the rest used unlabelled for adaptation",
        f"- seeds: {', '.join(map(str, cfg.seeds))}; head: {cfg.head or 'defaults'}",
        "",
        markdown_table(table),
        "",
    ]
    if proxy:
        lines.insert(
            2,
            "**Proxy target**: pseudo single cells sampled from held-out bulk cell lines, not "
            "real single-cell data (see docs/drug_response.md).\n",
        )
    files["comparison_md"].write_text("\n".join(lines))
    title = f"SCAD AUROC on {'the proxy target' if proxy else target_name}"
    figs = {
        "auroc_png": auroc_figure(per_seed, title),
        "sensitivity_png": sensitivity_figure(
            preds, f"predicted sensitivity of test cells ({'proxy target' if proxy else where})"
        ),
        "sensitivity_by_group_png": sensitivity_figure(
            preds[preds["seed"] == cfg.seeds[0]],
            f"predicted sensitivity per group, seed {cfg.seeds[0]} "
            f"({'proxy target: held-out cell lines' if proxy else where})",
            by="group",
        ),
    }
    for key, fig in figs.items():
        fig.savefig(files[key], dpi=110)
        plt.close(fig)
    run_id = _log_mlflow(cfg, table, files, proxy) if cfg.mlflow else None
    return ScadEvaluation(table, per_seed, preds, summaries, where, files, run_id)


def _log_mlflow(cfg: ScadEvaluateConfig, table: pd.DataFrame, files, proxy: bool) -> str:
    import mlflow

    from scfm.tracking import log_params_flat, start_run

    with start_run(
        "evaluate",
        run_name=f"scad {', '.join(cfg.drugs)}",
        tags={"scfm.task": "scad", "scfm.target": "proxy" if proxy else str(cfg.target.h5ad)},
        lineage=cfg.models,
    ) as run:
        log_params_flat({"evaluate": cfg.to_dict()})
        metrics = {}
        for r in table.itertuples():
            key = f"{slug(r.drug)}.{slug(r.method)}"
            for name in ("auroc_mean", "auroc_sd", "auprc_mean", "auprc_sd", "seconds"):
                metrics[f"{key}.{name}"] = getattr(r, name)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for path in files.values():
            mlflow.log_artifact(str(path), "evaluation")
        return run.info.run_id


# ------------------------------------------------------------------------------ finetune
@dataclass
class ScadFinetuneConfig:
    """Inputs and options of ``scfm finetune scad``."""

    drug: str = "PLX4720"
    source: ScadSourceConfig = field(default_factory=ScadSourceConfig)
    target: ScadTargetConfig = field(default_factory=ScadTargetConfig)
    input: str = "scfm"  # scfm (frozen embeddings) | expression (the original SCAD)
    model: str = "random:tiny"  # backbone of the scfm input
    sweep: SweepConfig = field(default_factory=SweepConfig)
    val_size: float = 0.2
    seed: int = 0
    zscore_scale: float = DEFAULT_ZSCORE_SCALE
    output_dir: str = "results/finetune/scad"
    device: str = "auto"
    embed_batch_size: int = 32
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScadFinetuneResult:
    sweep: SweepResult
    test: dict[str, float]  # empty when the target is unlabelled
    source: str
    target: str
    files: dict[str, Path]


def finetune_scad(cfg: ScadFinetuneConfig) -> ScadFinetuneResult:
    """Ray Tune sweep of the SCAD head for one drug; the best head is tested on the target's
    held-out labelled cells (when labelled), saved for ``scfm predict scad`` and registered."""
    import mlflow

    from scfm.tasks.base import load_head
    from scfm.tasks.models import load_backbone
    from scfm.tasks.scad import SCADHead, predict_proba
    from scfm.tasks.tune import run_sweep
    from scfm.tracking import tracking_uri

    if cfg.input not in ("scfm", "expression"):
        raise ScadDataError(f"input must be 'scfm' or 'expression', got {cfg.input!r}")
    full = cfg.source.load(cfg.drug)
    target = cfg.target.load()
    if target is None:
        source, target = make_proxy_target(
            full, replace(cfg.target.proxy, seed=cfg.seed), min_per_class=cfg.source.min_per_class
        )
    else:
        source = full
    if cfg.input == "scfm":
        cache = EmbeddingCache(load_backbone(cfg.model, seed=cfg.seed), cfg)
        inputs = scfm_inputs(source, target, cfg.target, cache)
        label = cache.backbone.label
    else:
        inputs, label = expression_inputs(source, target, cfg.target), "raw expression"
    data = scad_data(
        inputs,
        source,
        target,
        val_size=cfg.val_size,
        test_size=cfg.target.test_size,
        seed=cfg.seed,
        drug_info=drug_info(source),
    )
    head = SCADHead()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = run_sweep(
        head,
        data,
        cfg.sweep,
        output_dir=out / "model",
        lineage=[str(cfg.model)],
        tags={
            "scfm.drug": source.drug,
            "scfm.input": cfg.input,
            "scfm.backbone": label,
            "scfm.target": "proxy" if target.proxy else target.name,
        },
        params={
            "source": asdict(cfg.source) | {"summary": source.summary()},
            "target": {
                "name": target.name,
                "n_cells": target.n_cells,
                "test_size": cfg.target.test_size,
            },
            "input": {"kind": cfg.input, "backbone": label},
        },
    )
    model, _ = load_head(sweep.model_dir, head)
    files = {"trials_csv": out / "trials.csv", "metrics_json": out / "test_metrics.json"}
    sweep.trials.to_csv(files["trials_csv"], index=False)
    test: dict[str, float] = {}
    if data.size("test"):
        x, y = data.xy("test")
        p = predict_proba(model, x)
        test = {
            "test_auroc": binary_auroc(y, p),
            "test_auprc": average_precision(y, p),
            "test_n": float(y.size),
        }
        files["predictions_csv"] = out / "test_predictions.csv"
        test_rows = data.rows["test"]
        pd.DataFrame(
            {
                "cell": np.asarray(target.adata.obs_names, dtype=object)[test_rows],
                "group": target.groups[test_rows],
                "label": np.asarray(CLASSES, dtype=object)[y.astype(np.int64)],
                "p_sensitive": p,
            }
        ).to_csv(files["predictions_csv"], index=False)
    summary = {
        "drug": source.drug,
        "source": source.summary(),
        "target": target.name,
        "proxy": target.proxy is not None,
        "input": cfg.input,
        "backbone": label,
        **test,
        "best_config": sweep.best_config,
        "model_dir": str(sweep.model_dir),
        "model_uri": sweep.model_uri,
    }
    files["metrics_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=sweep.parent_run_id):
        if test:
            mlflow.log_metrics(test)
        for path in files.values():
            mlflow.log_artifact(str(path), "test")
    return ScadFinetuneResult(sweep, test, source.summary(), target.name, files)


# ------------------------------------------------------------------------------ predict
@dataclass
class ScadPrediction:
    """What ``predict_scad`` wrote into the AnnData."""

    drug: str
    n_cells: int
    n_predicted_sensitive: int
    keys: dict[str, str]  # obs columns written
    n_genes_missing: int  # model genes the cells lack (entered as the training mean)
    groups: pd.DataFrame | None  # mean P(sensitive) per group, when group_key is given


def head_folder(spec: str | Path, dst: str | Path) -> Path:
    """A saved head's folder: a local folder (or its head.pt), or ``models:/name/version`` /
    ``runs:/…`` fetched from MLflow into ``dst``."""
    text = str(spec)
    if text.startswith(("models:/", "runs:/")):
        import mlflow

        from scfm.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(dst)))
        found = sorted(p.parent for p in local.rglob("head.pt"))
        if not found:
            raise FileNotFoundError(f"{text} holds no scfm head (head.pt not found)")
        return found[0]
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(
            f"head {text!r} not found: pass the folder `scfm finetune scad` wrote (…/model), its "
            "head.pt, or a registered model such as models:/scfm-scad-head/1"
        )
    return path.parent if path.is_file() else path


def predict_scad(
    model: str | Path,
    adata,
    *,
    layer: str | None = None,
    backbone: str | None = None,
    key_added: str = "scad",
    group_key: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
) -> ScadPrediction:
    """Predict each cell's sensitivity with a trained SCAD head and write it into ``adata``.

    Writes ``obs[f"{key_added}_sensitivity"]`` (P(sensitive)), ``obs[f"{key_added}_prediction"]``
    (sensitive / resistant at 0.5) and ``uns[key_added]`` (drug, labels, model, input).

    Parameters
    ----------
    model
        The head folder of ``scfm finetune scad`` or a registered ``models:/…`` URI.
    adata
        Single cells with raw counts in ``X`` (or ``layer``), any gene ids.
    backbone
        scfm model for heads trained on embeddings, when the recorded one cannot be reloaded
        (e.g. a model trained in another process); default: the recorded spec.
    group_key
        obs column to summarize the predictions by.
    """
    from scfm.tasks.base import load_head
    from scfm.tasks.models import load_backbone
    from scfm.tasks.scad import SCADHead, predict_proba

    target = target_from_anndata(adata, layer=layer, group_key=group_key)
    with tempfile.TemporaryDirectory(prefix="scfm-head-") as tmp:
        folder = head_folder(model, tmp)
        net, payload = load_head(folder, SCADHead())
    extra = payload["spec"]["extra"]
    if payload["spec"].get("task") != "scad":
        raise ScadDataError(f"{model} is a {payload['spec'].get('task')!r} head, not a SCAD head")
    genes = check_gene_overlap(extra["genes"], target)
    if extra["input"] == "expression":
        from scfm.data.genes import GeneVocab

        vocab = GeneVocab.load()
        model_genes = np.array([vocab.index(g) for g in extra["genes"]], dtype=np.int64)
        x = cell_expression_features(
            target.X, target.mapping, model_genes, extra["expression_kind"]
        )
        missing = int(np.isnan(x[0]).sum()) if len(x) else 0
    else:
        spec = backbone or extra["backbone"]
        if spec.startswith("in-process:"):
            raise ScadDataError(
                f"the head was trained on embeddings of a model that existed only in its process "
                f"({extra['backbone_label']}); pass the same model with --backbone"
            )
        x, _ = embed_target(
            target,
            load_backbone(spec, seed=int(extra.get("backbone_seed", 0))),
            batch_size=batch_size,
            device=device,
        )
        missing = len(extra["genes"]) - int(genes.size)
    p = predict_proba(net, np.asarray(x, dtype=np.float32))
    keys = {"sensitivity": f"{key_added}_sensitivity", "prediction": f"{key_added}_prediction"}
    adata.obs[keys["sensitivity"]] = p
    adata.obs[keys["prediction"]] = pd.Categorical(
        np.where(p >= 0.5, CLASSES[1], CLASSES[0]), categories=CLASSES
    )
    adata.uns[key_added] = {
        "drug": extra.get("drug", ""),
        "label_rule": extra.get("label_rule", ""),
        "model": str(model),
        "input": extra["input"],
        "backbone": extra.get("backbone_label", "raw expression"),
        "n_genes_missing": missing,
    }
    groups = None
    if group_key is not None:
        groups = (
            pd.DataFrame({"group": target.groups, "p_sensitive": p})
            .groupby("group", sort=True)["p_sensitive"]
            .agg(["size", "mean"])
            .rename(columns={"size": "n_cells", "mean": "mean_p_sensitive"})
            .reset_index()
        )
    return ScadPrediction(
        str(extra.get("drug", "")), len(p), int((p >= 0.5).sum()), keys, missing, groups
    )
