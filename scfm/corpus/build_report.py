"""A build's MLflow run: :func:`build_and_log` opens the run, builds, then logs what it made.

The run is opened before the build so the manifest records its id (pretraining runs link back
to it); parameters, metrics, the manifest and the QC histograms are logged after the build
returns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from scfm.storage import redact_uri

if TYPE_CHECKING:
    from scfm.corpus.build import BuildConfig, BuildResult
    from scfm.corpus.manifest import Manifest

logger = logging.getLogger(__name__)


def qc_figure(histograms: dict, edges: dict):
    """Two panels: counts per cell and expressed genes per cell (log10), all vs kept cells."""
    from scfm.plotting import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    titles = {"total_counts": "counts per cell", "n_genes": "expressed genes per cell"}
    for ax, metric in zip(axes, ("total_counts", "n_genes"), strict=True):
        e = np.asarray(edges[metric])
        for part, color in (("all", "0.7"), ("kept", "C0")):
            counts = np.asarray(histograms.get(metric, {}).get(part, np.zeros(len(e) - 1)))
            ax.stairs(
                counts, e, fill=part == "all", color=color, label=f"{part} ({counts.sum():,})"
            )
        ax.set_xlabel(f"log10({titles[metric].split(' per')[0]} + 1)")
        ax.set_ylabel("cells")
        ax.set_title(titles[metric])
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def metrics_of(manifest: Manifest, result: BuildResult | None = None) -> dict[str, float]:
    """Flat MLflow metrics of a manifest: cells in/kept/dropped by reason, genes mapped, size."""
    t = manifest.totals
    m: dict[str, float] = {
        "cells_in": t["n_cells_in"],
        "cells_kept": t["n_cells_kept"],
        "cells_dropped": t["n_cells_in"] - t["n_cells_kept"],
        "cells_train": t["n_cells_train"],
        "cells_val": t["n_cells_val"],
        "datasets": t["n_datasets"],
        "datasets_quarantined": t["n_quarantined"],
        "shards": t["n_shards"],
        "bytes": t["bytes"],
        "bytes_per_cell": t["bytes"] / t["n_cells_kept"] if t["n_cells_kept"] else 0.0,
        "nnz_per_cell": t["nnz_kept"] / t["n_cells_kept"] if t["n_cells_kept"] else 0.0,
    }
    for reason, n in t["dropped"].items():
        m[f"dropped_{reason}"] = n
    genes_in = sum(d.genes["n_input"] for d in manifest.datasets)
    genes_mapped = sum(d.genes["n_mapped"] for d in manifest.datasets)
    m["genes_mapped_fraction"] = genes_mapped / genes_in if genes_in else 0.0
    m["genes_mapped_min_fraction"] = min(
        (d.genes["fraction_mapped"] for d in manifest.datasets), default=0.0
    )
    changes = manifest.changes if result is None else result.changes  # this run's findings
    for k in ("added", "changed", "removed", "unchanged"):
        m[f"datasets_{k}"] = len(changes[k])
    if result is not None:
        m["seconds"] = result.seconds
        m["units_processed"] = result.units_processed
        m["units_reused"] = result.units_reused
        if result.committed:
            m["cells_per_s"] = t["n_cells_in"] / result.seconds if result.seconds else 0.0
        if result.unit_results:
            m["peak_worker_rss_mb"] = max(r.peak_rss_mb for r in result.unit_results)
    return m


def build_and_log(cfg: BuildConfig) -> BuildResult:
    """Build (or refresh) and, with ``cfg.mlflow``, track it as a run of experiment ``corpus``.

    The run id goes into the manifest; the run is named after the committed version (a refresh
    that found nothing to do commits none: its run names the version that is up to date).
    """
    from scfm import tracking
    from scfm.corpus.build import build_corpus

    if not cfg.mlflow:
        return build_corpus(cfg)
    from scfm.corpus.lease import check_free
    from scfm.corpus.shards import resolve

    check_free(*resolve(cfg.output))  # before opening a run that could not be filled
    tags = {
        "scfm.corpus_uri": redact_uri(cfg.output),
        "scfm.corpus_kind": "refresh" if cfg.refresh else "build",
    }
    result = None
    try:
        with tracking.start_run("corpus", run_name=cfg.run_name, tags=tags) as run:
            result = build_corpus(cfg, mlflow_run_id=run.info.run_id)
            log_build(result, cfg)
    except Exception as exc:
        if result is None:  # the build itself failed (or MLflow before it): nothing committed
            raise
        # The manifest is committed: the corpus is complete whatever MLflow does now.
        logger.warning(
            "corpus v%d is %s (%s), but logging it to MLflow failed: %s: %s. The corpus "
            "is usable; its MLflow run %s may lack metrics or artifacts",
            result.manifest.corpus_version,
            "committed" if result.committed else "up to date (nothing committed)",
            result.manifest_path, type(exc).__name__, str(exc)[:300], run.info.run_id,
        )  # fmt: skip
        result.mlflow_error = f"{type(exc).__name__}: {exc}"
        _forget_active_run()
    return result


def _forget_active_run() -> None:
    """Leave no half-ended run active in this process (the server may still be down)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    try:
        mlflow.end_run("FAILED")
    except Exception:  # noqa: BLE001 - the server is unreachable; drop the local reference
        from mlflow.tracking import fluent

        fluent._active_run_stack.get().clear()  # private, but the only way without a server


def log_build(result: BuildResult, cfg: BuildConfig) -> None:
    """Log a committed build (or a refresh that found the newest version up to date) into the
    active MLflow run."""
    import mlflow

    from scfm import tracking

    man = result.manifest
    # a refresh that found nothing to do committed nothing: its run records the check
    kind = man.kind if result.committed else "refresh (up to date)"
    if not cfg.run_name:
        mlflow.set_tag("mlflow.runName", f"{kind} v{man.corpus_version}")
    mlflow.set_tags(
        {
            "scfm.corpus_version": str(man.corpus_version),
            "scfm.manifest_sha256": man.checksum,
            "scfm.committed": str(result.committed).lower(),
        }
    )
    tracking.log_params_flat(
        {
            "output": redact_uri(cfg.output),
            "kind": kind,
            "corpus_version": man.corpus_version,
            "code_version": man.code_version,
            "code_revision": man.code_revision,
            "fingerprint": man.fingerprint,
            "vocab_checksum": man.vocab_checksum[:16],
            **{f"source.{s.name}": {"spec": s.spec, "release": s.release} for s in man.sources},
            **cfg.settings(),
        }
    )
    tracking.log_metrics(metrics_of(man, result))
    tracking.log_corpus_input(
        cfg.output,
        man.corpus_version,
        man.checksum,
        context="build" if result.committed else "refresh check",
        n_cells=man.totals["n_cells_kept"],
    )
    tracking.log_json(man.to_dict(), "manifest.json")
    versions = {d.label: d.version for d in man.datasets}
    tracking.log_json(
        {
            "datasets": versions,
            "quarantined": [q.__dict__ for q in man.quarantined],
            "changes": result.changes,  # what this run found (a no-op refresh: all unchanged)
        },
        "dataset_versions.json",
    )
    try:
        fig = qc_figure(result.histograms, man.qc_hist_edges)
        tracking.log_figure(fig, "qc_histograms.png")
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a committed build
        logger.warning("QC plot failed: %s", exc)
