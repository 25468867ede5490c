"""MLflow conventions for scfm: where runs go, how they are named, what they carry.

* Tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow 3
  refuses plain-path file stores; a sqlite file needs no server). With a sqlite store, experiments
  created here keep artifacts in ``mlartifacts/`` beside the database file.
* Experiments: one per stage, :data:`EXPERIMENTS` (``corpus``, ``pretrain``, ``finetune``,
  ``embed``, ``evaluate``).
* Tags on every run: ``scfm.version``, ``scfm.stage``; lineage tags such as
  ``scfm.corpus_version`` / ``scfm.corpus_uri`` link a pretraining run to its corpus.
* Lineage, stage to stage: corpus build run (``scfm.corpus_version``, manifest checksum, the
  corpus logged as an MLflow dataset) → pretraining run (``scfm.corpus_run_id``, the same dataset
  as its training input, the checkpoint as a logged model and a registered model version) →
  evaluation / fine-tuning runs (``scfm.model_uri``, ``scfm.pretrain_run_id``,
  ``scfm.corpus_version``, ``scfm.corpus_run_id``; the corpus the model saw as an input).
  :func:`start_run` with ``lineage=[model specs]`` writes the last link.
* Each experiment carries a description (:data:`EXPERIMENT_DESCRIPTIONS`, shown in the UI).

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
from collections.abc import Iterator, Mapping, Sequence
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
EXPERIMENT_DESCRIPTIONS: dict[str, str] = {
    "corpus": "scfm corpus builds and refreshes (Ray Data): cells kept / dropped by QC, genes "
    "mapped, the manifest. The Dataset column is the committed corpus version.",
    "pretrain": "scfm pretraining runs (Ray Train): losses, throughput, checkpoints. Tags "
    "scfm.corpus_version / scfm.corpus_run_id link each run to its corpus build; the model is "
    "registered in the model registry.",
    "finetune": "Ray Tune sweeps of downstream heads: one parent run per sweep, its trials "
    "nested under it. Tags scfm.model_uri / scfm.pretrain_run_id name the backbone.",
    "embed": "Embedding jobs: cells embedded with a pretrained model.",
    "evaluate": "scfm vs baselines on downstream tasks (annotation, DeepCDR, SCAD, GEARS): "
    "one run per evaluation. Tags scfm.model_uri / scfm.pretrain_run_id / scfm.corpus_version "
    "trace the model back to its pretraining run and corpus.",
}
_NOTE_TAG = "mlflow.note.content"  # the experiment description the MLflow UI shows
_MAX_DIGEST_LEN = 36  # MLflow's dataset digest column (String(36))
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
    description = EXPERIMENT_DESCRIPTIONS.get(stage, "")
    exp = mlflow.get_experiment_by_name(name)
    if exp:
        if description and not exp.tags.get(_NOTE_TAG):
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, _NOTE_TAG, description)
        return exp.experiment_id
    tags = {_NOTE_TAG: description} if description else None
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location(), tags=tags)
    except mlflow.exceptions.MlflowException:  # created concurrently (Tune workers)
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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
    lineage: Sequence[str] = (),
) -> Iterator[Any]:
    """A run in the stage's experiment (or ``experiment``), tagged with version and stage.

    ``lineage``: the model specs the run uses; the first registered one (``models:/name/N``)
    links the run to its pretraining run and corpus (:func:`log_model_lineage`).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = ensure_experiment(stage, experiment)
    all_tags = {"scfm.version": __version__, "scfm.stage": stage, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        if lineage:
            log_model_lineage(lineage)
        yield run


# ------------------------------------------------------------------------------------ lineage
def corpus_dataset(
    uri: str, version: int | str, checksum: str, *, n_cells: int | str | None = None
) -> Any:
    """A corpus version as an MLflow dataset: name ``<folder> v<version>``, the manifest's
    sha256 as digest (cut to MLflow's 36-character column; the profile holds it whole)."""
    from mlflow.data.meta_dataset import MetaDataset

    class CorpusDataset(MetaDataset):
        @property
        def profile(self) -> dict[str, str]:
            return profile

    profile = {"corpus_version": str(version), "manifest_sha256": checksum}
    if n_cells is not None:
        profile["n_cells"] = str(n_cells)
    return CorpusDataset(
        _dataset_source(uri),
        name=f"{Path(str(uri).rstrip('/')).name or uri} v{version}",
        digest=checksum[:_MAX_DIGEST_LEN],
    )


def _dataset_source(uri: str) -> Any:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    target = Path(uri).resolve().as_uri() if "://" not in uri else uri
    try:
        with warnings.catch_warnings():  # "file://" matches two registered local sources
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(target)
    except Exception:  # noqa: BLE001 - no source type for this scheme: a plain HTTP-style one
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        return HTTPDatasetSource(target)


def log_corpus_input(
    uri: str,
    version: int | str,
    checksum: str,
    *,
    context: str,
    n_cells: int | str | None = None,
) -> None:
    """Log a corpus version as an input of the active run (the UI's Dataset column)."""
    import mlflow

    try:
        ds = corpus_dataset(uri, version, checksum, n_cells=n_cells)
        mlflow.log_input(ds, context=context)
    except Exception as exc:  # noqa: BLE001 - lineage must never fail a run
        logger.warning("could not log corpus %s v%s as an MLflow input: %s", uri, version, exc)


def model_lineage(spec: str) -> dict[str, str]:
    """Lineage tags of a registered model ``models:/name/N``: its pretraining run and corpus.

    Empty for other specs (checkpoint folders, ``random:``) and for unknown versions.
    """
    from mlflow import MlflowClient

    if not spec.startswith("models:/"):
        return {}
    name, _, version = spec[len("models:/") :].rstrip("/").rpartition("/")
    client = MlflowClient()
    try:
        if not version.isdigit():
            raise ValueError(f"not a version number: {version!r}")
        mv = client.get_model_version(name, version)
        run = client.get_run(mv.run_id) if mv.run_id else None
    except Exception as exc:  # noqa: BLE001
        logger.warning("no lineage for %s: %s", spec, exc)
        return {"scfm.model_uri": spec}
    tags = {"scfm.model_uri": spec, "scfm.model_name": name, "scfm.model_version": version}
    if run is not None:
        tags["scfm.pretrain_run_id"] = run.info.run_id
        for key in ("scfm.corpus_version", "scfm.corpus_uri", "scfm.corpus_run_id"):
            if run.data.tags.get(key):
                tags[key] = run.data.tags[key]
        sha = run.data.params.get("corpus.manifest_sha256")
        if sha:
            tags["scfm.corpus_manifest_sha256"] = sha
    return tags


def log_model_lineage(specs: Sequence[str]) -> dict[str, str]:
    """Tag the active run with the lineage of the first registered model among ``specs`` and log
    the corpus that model was pretrained on as an input (context ``pretraining``)."""
    import mlflow

    for spec in specs:
        tags = model_lineage(str(spec))
        if tags:
            mlflow.set_tags(tags)
            if tags.get("scfm.corpus_manifest_sha256") and tags.get("scfm.corpus_uri"):
                log_corpus_input(
                    tags["scfm.corpus_uri"],
                    tags.get("scfm.corpus_version", "?"),
                    tags["scfm.corpus_manifest_sha256"],
                    context="pretraining",
                )
            return tags
    return {}


def log_external_model(run: Any, artifact_path: str, name: str, params: Mapping[str, Any]) -> Any:
    """A logged model (MLflow 3: the runs table's Models column) for a plain-file checkpoint.

    The weights stay in the run's ``artifact_path`` folder (``external`` model, no pickled
    flavour); returns the :class:`mlflow.entities.LoggedModel` or None when unsupported.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    try:
        model = mlflow.create_external_model(
            name=name,
            source_run_id=run.info.run_id,
            params={k: str(v)[:_MAX_PARAM_LEN] for k, v in params.items()},
            tags={"scfm.artifact_uri": f"{run.info.artifact_uri}/{artifact_path}"},
            model_type="scfm-xtrimogene",
        )
        mlflow.MlflowClient().log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, 0)])
        return model
    except Exception as exc:  # noqa: BLE001 - older servers: the registry link still shows
        logger.warning("could not create a logged model for run %s: %s", run.info.run_id, exc)
        return None


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


def register_artifact(
    run: Any,
    artifact_path: str,
    name: str,
    description: str = "",
    *,
    model_id: str | None = None,
) -> str:
    """Register a run's artifact folder as a new version of model ``name``; returns its URI.

    Plain files (no pickled MLflow model flavour): loaders read them with ``weights_only=True``.
    ``model_id``: the logged model (:func:`log_external_model`) the version comes from.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name, description=description)
    except MlflowException:
        pass  # already registered
    source = f"{run.info.artifact_uri}/{artifact_path}"
    try:
        version = client.create_model_version(
            name, source=source, run_id=run.info.run_id, model_id=model_id
        )
    except MlflowException as exc:
        if model_id is None or exc.error_code != "INVALID_PARAMETER_VALUE":
            raise
        # A tracking server (unlike a local store) wants the source inside the logged model's
        # own artifacts; the weights are the run's files, so register them without the link
        # (the logged model stays in the run's Models column).
        logger.info("registering %s without its logged-model link: %s", name, exc.message)
        version = client.create_model_version(name, source=source, run_id=run.info.run_id)
    return f"models:/{name}/{version.version}"


class AsyncMetricLogger:
    """Metrics of one run, buffered and sent by a background thread; the caller never waits.

    :meth:`log` appends to an in-memory queue and returns. A thread sends batches
    (``MlflowClient.log_batch``, at most 1,000 metrics each) every ``interval_s``. When the
    tracking server is unreachable it logs one warning, keeps the metrics, and retries with a
    backoff up to ``max_backoff_s``; once a batch goes through again it says so and catches up.
    :meth:`flush` waits until what is queued has been sent (not while the server is down);
    :meth:`close` flushes, waiting up to ``flush_timeout_s``; what still cannot be sent then is
    written to ``unsent_dir/mlflow-unsent-<run_id>.jsonl`` (one metric per line) and named in a
    warning, so nothing is lost silently. At most ``max_buffer`` metrics wait in memory (the
    oldest are written to that file beyond it).

    The client's own per-request retries are turned off (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``
    unless set) in this process: this loop retries, without blocking anyone.
    """

    BATCH = 1000

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        interval_s: float = 2.0,
        max_backoff_s: float = 30.0,
        flush_timeout_s: float = 300.0,
        max_buffer: int = 1_000_000,
        unsent_dir: str | None = None,
    ):
        import collections
        import threading

        from mlflow import MlflowClient

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.interval_s, self.max_backoff_s = interval_s, max_backoff_s
        self.flush_timeout_s, self.max_buffer = flush_timeout_s, max_buffer
        self.unsent_dir = unsent_dir or os.getcwd()
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._down_since: float | None = None
        self.n_sent = 0
        self.n_failures = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue finite numeric metrics of ``step`` (returns at once)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k.replace(":", "_"), float(v), now, int(step))
            for k, v in flatten(metrics).items()
            if not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
        ]
        with self._lock:
            self._queue.extend(batch)
            overflow = len(self._queue) - self.max_buffer
            dropped = [self._queue.popleft() for _ in range(max(overflow, 0))]
        if dropped:
            self._write_unsent(dropped)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _take(self) -> list:
        with self._lock:
            return [self._queue[i] for i in range(min(self.BATCH, len(self._queue)))]

    def _drop(self, n: int) -> None:
        with self._lock:
            for _ in range(n):
                self._queue.popleft()

    def _send_pending(self) -> bool:
        """Send everything queued now; False (and keep it) when the server does not take it."""
        import time

        while batch := self._take():
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # noqa: BLE001 - any failure: keep the metrics, retry later
                self.n_failures += 1
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning(
                        "MLflow at %s is not taking metrics (%s: %s); training goes on, metrics "
                        "are kept and sent when it is back",
                        self.tracking_uri, type(exc).__name__, str(exc)[:200],
                    )  # fmt: skip
                return False
            self._drop(len(batch))
            self.n_sent += len(batch)
            if self._down_since is not None:
                logger.warning(
                    "MLflow at %s is back after %.0f s; sending the buffered metrics",
                    self.tracking_uri, time.monotonic() - self._down_since,
                )  # fmt: skip
                self._down_since = None
        return True

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._closing.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            ok = self._send_pending()
            backoff = self.interval_s if ok else min(backoff * 2, self.max_backoff_s)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait (up to ``timeout_s``) until what is queued now has been sent; returns the metrics
        still pending. Returns at once while the server is down: training never waits on it."""
        import time

        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.pending and self._down_since is None and time.monotonic() < deadline:
            time.sleep(0.01)
            self._wake.set()
        return self.pending

    def close(self) -> int:
        """Flush (waiting up to ``flush_timeout_s``) and stop; returns the metrics not sent."""
        import time

        self._closing.set()
        self._wake.set()
        self._thread.join()
        deadline = time.monotonic() + self.flush_timeout_s
        backoff = 0.5
        while not self._send_pending() and time.monotonic() < deadline:
            time.sleep(min(backoff, max(deadline - time.monotonic(), 0)))
            backoff = min(backoff * 2, self.max_backoff_s)
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
        if left:
            self._write_unsent(left)
        return len(left)

    def _write_unsent(self, metrics: list) -> None:
        path = Path(self.unsent_dir) / f"mlflow-unsent-{self.run_id}.jsonl"
        with open(path, "a") as f:
            for m in metrics:
                f.write(json.dumps({"key": m.key, "value": m.value, "step": m.step,
                                    "timestamp": m.timestamp}) + "\n")  # fmt: skip
        logger.warning(
            "%d metrics could not be sent to MLflow at %s; written to %s (log them with "
            "MlflowClient().log_batch when the server is back)",
            len(metrics), self.tracking_uri, path,
        )  # fmt: skip
