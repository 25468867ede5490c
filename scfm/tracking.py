"""MLflow conventions for scfm: where runs go, how they are named, what they carry.

* Tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow 3
  refuses plain-path file stores; a sqlite file needs no server). With a sqlite store, experiments
  created here keep artifacts in ``mlartifacts/`` beside the database file.
* Experiments: one per stage, :data:`EXPERIMENTS` (``corpus``, ``pretrain``, ``finetune``,
  ``embed``, ``evaluate``).
* Tags on every run: ``scfm.version``, ``scfm.stage``; lineage tags such as
  ``scfm.corpus_version`` / ``scfm.corpus_uri`` link a pretraining run to its corpus.

mlflow is imported inside the functions: ``import scfm.tracking`` is free.

Examples
--------
>>> with start_run("corpus", run_name="build v3") as run:   # doctest: +SKIP
...     log_params_flat({"qc": {"min_genes": 200}})
...     log_metrics({"cells_kept": 1000})
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scfm import __version__

logger = logging.getLogger(__name__)

EXPERIMENTS: dict[str, str] = {
    "corpus": "corpus",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "embed": "embed",
    "evaluate": "evaluate",
}
_MAX_PARAM_LEN = 500  # MLflow's limit on a param value (6000 in recent servers; stay portable)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def experiment_name(stage: str) -> str:
    """The experiment of a pipeline stage (see :data:`EXPERIMENTS`)."""
    try:
        return EXPERIMENTS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(EXPERIMENTS)}") from None


def ensure_experiment(stage: str, name: str | None = None) -> str:
    """Create the stage's experiment (or ``name``) if needed; Tune's ``setup_mlflow`` needs it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    name = name or experiment_name(stage)
    exp = mlflow.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location())


def artifact_location() -> str | None:
    """Artifacts beside a sqlite store (``<db dir>/mlartifacts``), not in ``./mlruns`` of the cwd.

    None (the server's default) for other tracking URIs.
    """
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts").resolve().as_uri()


@contextmanager
def start_run(
    stage: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
) -> Iterator[Any]:
    """A run in the stage's experiment (or ``experiment``), tagged with version and stage."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = ensure_experiment(stage, experiment)
    all_tags = {"scfm.version": __version__, "scfm.stage": stage, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        yield run


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"qc": {"min_genes": 200}}`` → ``{"qc.min_genes": 200}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def log_params_flat(params: Mapping[str, Any]) -> None:
    """Log nested params flattened; long values are truncated (log the full JSON as artifact)."""
    import mlflow

    from scfm.storage import redact_values

    flat = {}
    for k, v in flatten(redact_values(dict(params))).items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        flat[k] = text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."
    mlflow.log_params(flat)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics (nested keys flattened with ``.``; others skipped)."""
    import mlflow

    clean = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        clean[k.replace(":", "_")] = float(v)
    mlflow.log_metrics(clean, step=step)


def log_json(obj: Any, artifact_file: str) -> None:
    """Log a JSON-serializable object as an artifact file."""
    import mlflow

    mlflow.log_dict(obj, artifact_file)


def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure (and close it)."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def register_artifact(run: Any, artifact_path: str, name: str, description: str = "") -> str:
    """Register a run's artifact folder as a new version of model ``name``; returns its URI.

    Plain files (no pickled MLflow model flavour): loaders read them with ``weights_only=True``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name, description=description)
    except MlflowException:
        pass  # already registered
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run.info.run_id
    )
    return f"models:/{name}/{version.version}"
