"""Batch inference on Ray Data: a corpus or a folder of count files → parquet embeddings.

    corpus shards (parquet)  ──read_parquet──┐
    h5ad / 10x files ──plan blocks──read──── ┤  rows: cell_id, gene_idx, counts, total_counts, obs
                                             ▼
    map_batches(CellEmbedder, concurrency=n, num_gpus=1 on GPU)   actors hold the model
                                             ▼
    write_parquet: cell_id, embedding (fixed-size list<float32>), obs metadata

Files are read with the corpus sources (:mod:`scfm.corpus.sources`), so cell IDs follow the corpus
convention ``{source}:{dataset_id}:{obs_id}``; gene names are mapped once per file on the driver
(wrong species fails before any work starts) and every block's counts are validated where they are
read. Output appears atomically: it is written to a temporary sibling folder and renamed.
:func:`embed_dataset` is what ``scfm embed`` and ``workflows/embed.py`` call.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from scfm.cli_options import option
from scfm.corpus.harmonize import METADATA_COLUMNS
from scfm.inference.settings import POOL_PARTS
from scfm.runtime import ensure_ray

log = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
MODEL_INPUT_COLUMNS = ("cell_id", "gene_idx", "counts", "total_counts")


def _depth_option(value: str) -> str | float | None:
    """Command-line text → target depth: 'auto', 'S' (T = S), an official string, or a number."""
    if value.lower() == "auto":
        return "auto"
    if value.upper() == "S":
        return None
    try:
        return float(value)
    except ValueError:
        return value


@dataclass
class EmbedJobConfig:
    """One batch-inference job.

    Parameters
    ----------
    source
        A corpus root (path or URI with ``manifests/``), a folder of ``.h5ad`` / 10x inputs, or
        one such file.
    output
        Folder for the parquet files (must not exist unless ``overwrite``).
    model
        Model spec for :func:`scfm.inference.load_model` (checkpoint, ``models:/name/v``,
        official ``models.ckpt``), loaded once per actor.
    """

    source: str = option(
        help="Corpus root (path/URI), a folder of .h5ad/10x files, or a file.", argument=True
    )
    output: str = option(help="Output folder (parquet).", flags=("--output", "-o"))
    model: str = option(
        help="Checkpoint folder/file, models:/name/version, or models.ckpt.",
        flags=("--model", "-m"),
    )
    source_kind: str = option("auto", "auto, corpus or files.")
    variant: str = option("cell", "Official checkpoint entry: cell/rde/gene.")
    pool: tuple[str, ...] = option(
        POOL_PARTS,
        "Pooled parts, comma-separated, in order: S,T,max,mean (or a subset); max_all = the "
        "official pool_type max.",
        cli_type=str,
        parse=lambda text: tuple(p.strip() for p in str(text).split(",") if p.strip()),
    )
    settings: str = option(
        "auto", "auto (official for an official models.ckpt, else scfm), scfm, official."
    )
    target_depth: str | float | None = option(
        "auto",
        "T token: a log10 depth (4.0), official t4 / f10 / a1, S (T = S); auto: the preset's.",
        cli_type=str,
        parse=lambda text: _depth_option(str(text)),
    )
    depth_total: str = option(
        "auto", "Cell total from all_genes (scfm) or vocab_genes (official); auto: the preset's."
    )
    batch_size: int = option(64, "Cells per forward pass.")
    max_tokens: int | None = option(
        None, "Padded tokens per forward pass (CPU 4096, GPU 65536; 0 = no cap)."
    )
    block_cells: int = option(2048, "Cells per Ray Data batch (per actor).")
    concurrency: int = option(1, "Model actors (one GPU each on GPU).")
    device: str = option("auto", "auto (CUDA if available), cpu or cuda.")
    precision: str = option("auto", "auto (official: fp32; scfm: bf16 on CUDA), fp32 or bf16.")
    num_cpus_per_actor: float = option(1.0, "CPUs per model actor.")
    split: str | None = option(None, "Corpus split: train or val (default all).")
    corpus_version: int | None = option(None, "Corpus version (default: the newest).")
    layer: str | None = option(None, "h5ad layer with raw counts.")
    min_mapped_fraction: float = option(0.2, "Refuse files with fewer genes in the vocabulary.")
    overwrite: bool = option(False, "Replace an existing output folder.")
    progress: bool = option(True, "Show Ray Data progress bars.")
    ray_address: str | None = option(None, "Ray cluster address (default: local / RAY_ADDRESS).")
    mlflow: bool = option(True, "Log a run to MLflow experiment 'embed'.")
    experiment: str | None = option(None, "MLflow experiment (default: embed).")
    run_name: str | None = option(None, "MLflow run name.")
    umap_color: str | None = option(
        "cell_type",
        "obs column colouring the UMAP; 'none' for no plot.",
        parse=lambda text: None if str(text).lower() == "none" else text,
    )
    umap_max_cells: int = option(20_000, "Cells in the UMAP (random subset).")
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from scfm.inference.settings import check_pool, resolve_settings

        self.pool = check_pool(self.pool)
        # checks every setting early (the model kind is not known yet, so preset aside)
        resolve_settings(
            self.settings,  # type: ignore[arg-type]
            official_model=False,
            target_depth=self.target_depth,
            depth_total=self.depth_total,
            precision=self.precision,
        )
        if self.source_kind not in ("auto", "corpus", "files"):
            raise ValueError(f"source_kind must be auto, corpus or files, got {self.source_kind!r}")
        for name in ("batch_size", "block_cells", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbedJobResult:
    output: str
    n_cells: int
    embedding_dim: int
    seconds: float
    source_kind: str
    run_id: str | None = None
    umap_path: str | None = None

    @property
    def cells_per_s(self) -> float:
        return self.n_cells / self.seconds if self.seconds > 0 else math.nan


# ----------------------------------------------------------------------------------- actors
class CellEmbedder:
    """Ray Data callable class: holds the model, embeds pyarrow batches of corpus-schema rows."""

    def __init__(
        self,
        model: str,
        variant: str,
        device: str,
        precision: str,
        pool: Sequence[str],
        target_depth: str | None,
        batch_size: int,
        max_tokens: int | None,
        keep_columns: Sequence[str],
        depth_total: str = "all_genes",
    ) -> None:
        from scfm.inference.engine import InferenceEngine
        from scfm.inference.loading import load_model_with_info

        net, _ = load_model_with_info(model, device=device, variant=variant)
        self.engine = InferenceEngine(net, device=device, precision=precision)
        self.pool = tuple(pool)
        self.target_depth = target_depth
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.keep_columns = list(keep_columns)
        self.depth_total = depth_total

    def __call__(self, table: pa.Table) -> pa.Table:
        from scfm.data.packed import PackedCells
        from scfm.inference.embed import embed_packed

        cells = PackedCells.from_arrow(table)
        if self.depth_total == "vocab_genes":  # the official convention: vocabulary genes only
            totals = np.bincount(cells.rows(), weights=cells.counts, minlength=cells.n_cells)
            cells = dataclasses.replace(cells, total_counts=totals)
        emb = embed_packed(
            self.engine,
            cells,
            batch_size=self.batch_size,
            pool=self.pool,
            target_depth=self.target_depth,
            max_tokens=self.max_tokens,
        )
        return embedding_table(table.column("cell_id"), emb, table, self.keep_columns)


def embedding_table(
    cell_id: pa.ChunkedArray | pa.Array, emb: np.ndarray, source: pa.Table, keep: Sequence[str]
) -> pa.Table:
    """Output rows: ``cell_id``, ``embedding`` (fixed-size list<float32>), kept metadata."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    columns = {
        "cell_id": cell_id,
        EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
    }
    for name in keep:
        if name in source.column_names:
            columns[name] = source.column(name)
    return pa.table(columns)


# ------------------------------------------------------------------------------ file inputs
def _file_source(path: Path, layer: str | None):
    from scfm.corpus.sources import DirectorySource, FileSource

    if (
        path.is_dir()
        and not (path / "matrix.mtx").exists()
        and not (path / "matrix.mtx.gz").exists()
    ):
        return DirectorySource(root=str(path), name=path.name or "dir", layer=layer)
    return FileSource(paths=[str(path)], name="files", layer=layer)


def _read_unit_batch(batch: dict, source_config: dict, min_mapped_fraction: float) -> pa.Table:
    """``map_batches`` body: read file blocks, validate counts, map genes, pack as corpus rows."""
    import json

    from scfm.corpus.sources import WorkUnit, source_from_config
    from scfm.data.validate import InputValidationError, check_counts

    source = source_from_config(source_config)
    tables = []
    for unit_json in batch["unit"]:
        unit = WorkUnit.from_dict(json.loads(str(unit_json)))
        block = source.read(unit)
        where = f"{unit.dataset_id} rows {unit.start}..{unit.stop - 1}"
        try:
            check_counts(block.X)
        except InputValidationError as exc:
            raise InputValidationError(f"{where}: {exc}") from None
        tables.append(_block_rows(source.name, unit.dataset_id, block))
    return pa.concat_tables(tables)


def _block_rows(source_name: str, dataset_id: str, block) -> pa.Table:
    import scipy.sparse as sp

    from scfm.data.genes import GeneVocab, gene_mapping

    mapping = gene_mapping(GeneVocab.load(), block.gene_ids)
    mapped = mapping.apply(block.X)  # cells × 19,264, sorted indices, no explicit zeros
    mapped = sp.csr_matrix(mapped)
    offsets = pa.array(mapped.indptr.astype(np.int32))
    columns: dict[str, Any] = {
        "cell_id": pa.array([f"{source_name}:{dataset_id}:{o}" for o in block.obs_ids]),
        "gene_idx": pa.ListArray.from_arrays(offsets, pa.array(mapped.indices.astype(np.int32))),
        "counts": pa.ListArray.from_arrays(offsets, pa.array(mapped.data.astype(np.float32))),
        "total_counts": pa.array(np.asarray(block.X.sum(axis=1), dtype=np.float64).ravel()),
    }
    for col in METADATA_COLUMNS:
        if col in block.obs.columns:
            columns[col] = pa.array(block.obs[col].astype(str).to_numpy())
    return pa.table(columns)


def _plan_files(cfg: EmbedJobConfig) -> tuple[Any, list[Any], int]:
    """The file source, its work units and the number of cells; checks genes before any work."""
    from scfm.data.genes import GeneVocab, gene_mapping
    from scfm.data.validate import InputValidationError, check_names, check_species

    path = Path(cfg.source)
    source = _file_source(path, cfg.layer)
    refs = source.datasets()
    if not refs:
        raise InputValidationError(f"no .h5ad / 10x inputs found under {path}")
    bad = [r for r in refs if r.error]
    if bad:
        raise InputValidationError(
            "; ".join(f"{r.dataset_id}: {r.error}" for r in bad[:5])
            + " (fix or move these files; batch inference embeds every input)"
        )
    vocab = GeneVocab.load()
    units = []
    for ref in refs:
        genes = source._handle(Path(ref.info["path"])).genes  # names only, matrix on disk
        try:
            check_names(genes, "gene")
            check_species(gene_mapping(vocab, genes), cfg.min_mapped_fraction)
        except InputValidationError as exc:
            raise InputValidationError(f"{ref.dataset_id}: {exc}") from None
        units.extend(source.plan(ref, cfg.block_cells))
    return source, units, sum(int(r.n_cells or 0) for r in refs)


# ------------------------------------------------------------------------------------ driver
def detect_source_kind(source: str) -> Literal["corpus", "files"]:
    """``corpus`` when ``source`` holds a committed corpus manifest, else ``files``."""
    from scfm.corpus.manifest import list_versions
    from scfm.corpus.shards import resolve

    if "://" in source:
        return "corpus"  # remote file folders are not supported, corpora are
    fs, root = resolve(source)
    if Path(root).is_dir() and list_versions(fs, root):
        return "corpus"
    if not Path(root).exists():
        raise FileNotFoundError(f"{source} does not exist")
    return "files"


def build_dataset(cfg: EmbedJobConfig) -> tuple[Any, int, dict[str, str]]:
    """The Ray Dataset of model-input rows, the expected number of cells, and lineage tags."""
    import json

    import ray.data

    kind = cfg.source_kind if cfg.source_kind != "auto" else detect_source_kind(cfg.source)
    if kind == "corpus":
        from scfm.corpus.loader import open_corpus

        corpus = open_corpus(cfg.source, cfg.corpus_version)
        schema_names = set(_corpus_columns(corpus))
        keep = [c for c in METADATA_COLUMNS if c in schema_names]
        ds = corpus.ray_dataset(split=cfg.split, columns=[*MODEL_INPUT_COLUMNS, *keep])
        n = corpus.n_cells if cfg.split is None else corpus.n_cells_split(cfg.split)
        tags = {
            "scfm.source_kind": "corpus",
            "scfm.corpus_uri": corpus.uri,
            "scfm.corpus_version": str(corpus.version),
        }
        return ds, n, tags
    if cfg.split is not None:
        raise ValueError("split= applies to corpora only; files are embedded whole")
    source, units, n = _plan_files(cfg)
    items = [{"unit": json.dumps(u.to_dict())} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        _read_unit_batch,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={
            "source_config": source.to_config(),
            "min_mapped_fraction": cfg.min_mapped_fraction,
        },
    )
    return ds, n, {"scfm.source_kind": "files", "scfm.source": str(cfg.source)}


def _corpus_columns(corpus) -> list[str]:
    import pyarrow.parquet as pq

    paths = corpus.shard_paths
    if not paths:
        return list(MODEL_INPUT_COLUMNS)
    with corpus.fs.open_input_file(paths[0]) as f:
        return pq.read_schema(f).names


def embed_dataset(cfg: EmbedJobConfig) -> EmbedJobResult:
    """Run one batch-inference job (see the module docstring); logs an MLflow run if asked."""
    import ray
    import ray.data
    from ray.data import DataContext

    from scfm.inference.loading import check_model_spec, is_official_spec
    from scfm.inference.settings import resolve_settings
    from scfm.runtime import resolve_device
    from scfm.storage import is_uri, list_files, move_dir, redact_uri

    remote = is_uri(cfg.output)
    out = Path(cfg.output)
    if (list_files(cfg.output) if remote else out.exists() and any(out.iterdir())) and not (
        cfg.overwrite
    ):
        raise FileExistsError(
            f"{redact_uri(cfg.output)} exists and is not empty; pass overwrite=True (--overwrite)"
        )
    check_model_spec(cfg.model)
    settings = resolve_settings(
        cfg.settings,  # type: ignore[arg-type]
        official_model=is_official_spec(cfg.model),
        target_depth=cfg.target_depth,
        depth_total=cfg.depth_total,
        precision=cfg.precision,
    )
    on_gpu = resolve_device(cfg.device).type == "cuda"
    ensure_ray(cfg.ray_address)
    DataContext.get_current().enable_progress_bars = cfg.progress
    t0 = time.perf_counter()
    ds, n_expected, lineage = build_dataset(cfg)
    ds = ds.map_batches(
        CellEmbedder,
        fn_constructor_kwargs={
            "model": cfg.model,
            "variant": cfg.variant,
            "device": cfg.device,
            "precision": settings.precision,
            "pool": cfg.pool,
            "target_depth": settings.target_depth,
            "batch_size": cfg.batch_size,
            "max_tokens": cfg.max_tokens,
            "keep_columns": METADATA_COLUMNS,
            "depth_total": settings.depth_total,
        },
        batch_size=cfg.block_cells,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),  # actors hold the model
        num_gpus=1 if on_gpu else None,
        num_cpus=cfg.num_cpus_per_actor,
    )
    # write beside the target and rename: readers never see a half-written output
    # (object stores have no folder rename: files are moved one by one after the count check)
    tmp = (cfg.output.rstrip("/") if remote else str(out)) + f".tmp-{uuid.uuid4().hex[:8]}"
    try:
        ds.write_parquet(tmp)
    except Exception as exc:
        _remove(tmp)
        cause = _user_error(exc)
        if cause is not None:  # the actionable error from inside a task, not Ray's wrapper
            raise cause from exc
        raise
    except BaseException:
        _remove(tmp)
        raise
    n_cells, dim = _count_rows(tmp)
    if n_cells != n_expected:
        raise RuntimeError(
            f"wrote {n_cells} embeddings for {n_expected} input cells; "
            f"output left in {redact_uri(tmp)}"
        )
    _remove(cfg.output)
    move_dir(tmp, cfg.output if remote else str(out))
    seconds = time.perf_counter() - t0
    output = cfg.output if remote else str(out)
    result = EmbedJobResult(output, n_cells, dim, seconds, lineage["scfm.source_kind"])
    log.info("embedded %d cells in %.1f s (%.1f cells/s)", n_cells, seconds, result.cells_per_s)
    if cfg.mlflow:
        _log_run(cfg, result, lineage, out, settings.record())
    return result


def _user_error(exc: BaseException) -> Exception | None:
    """The scfm input / model error a Ray task raised, rebuilt on the driver (or None).

    Ray Data reports a failed task as ``RayTaskError(UserCodeException)`` whose message carries
    the remote traceback; the original exception object does not travel. Its last line
    (``scfm.data.validate.InputValidationError: <message>``) is what the user needs.
    """
    from scfm.data.validate import InputValidationError
    from scfm.model.checkpoint import CheckpointError, OfficialCheckpointError

    classes = {
        "InputValidationError": InputValidationError,
        "CheckpointError": CheckpointError,
        "OfficialCheckpointError": OfficialCheckpointError,
        "GeneVocabularyMismatchError": CheckpointError,
    }
    pattern = re.compile(r"^scfm\.[\w.]*\.(\w+Error): (.+)$", re.MULTILINE)
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, tuple(classes.values())) and not type(e).__module__.startswith("ray"):
            return e
        found = [m for m in pattern.finditer(str(e)) if m.group(1) in classes]
        if found:
            name, message = found[-1].group(1), found[-1].group(2)
            return classes[name](message)
        stack.extend([e.__cause__, e.__context__])
    return None


def _remove(folder: str) -> None:
    from scfm.storage import delete_dir, is_uri

    if is_uri(folder):
        delete_dir(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _count_rows(folder: str | Path) -> tuple[int, int]:
    import pyarrow.parquet as pq

    from scfm.storage import list_files, resolve

    files = [f for f in list_files(str(folder)) if f.endswith(".parquet")]
    if not files:
        return 0, 0
    n = 0
    for f in files:
        fs, path = resolve(f)
        with fs.open_input_file(path) as fh:
            n += pq.ParquetFile(fh).metadata.num_rows
    fs, path = resolve(files[0])
    with fs.open_input_file(path) as fh:
        field_type = pq.read_schema(fh).field(EMBEDDING_COLUMN).type
    return n, int(field_type.list_size)


def read_embeddings(
    folder: str | Path, columns: Sequence[str] | None = None
) -> tuple[pa.Table, np.ndarray]:
    """The output of a job: its table (without the embedding column) and a ``(n, dim)`` array."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(folder), columns=list(columns) if columns else None)
    emb_col = table.column(EMBEDDING_COLUMN).combine_chunks()
    dim = emb_col.type.list_size
    emb = emb_col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return table.drop_columns([EMBEDDING_COLUMN]), emb


def _log_run(
    cfg: EmbedJobConfig,
    result: EmbedJobResult,
    lineage: dict[str, str],
    out: Path,
    settings: dict[str, Any],
) -> None:
    import mlflow

    from scfm.inference.plots import umap_figure
    from scfm.storage import is_uri, redact_values
    from scfm.tracking import log_figure, log_metrics, log_params_flat, start_run

    tags = redact_values({**lineage, "scfm.model": str(cfg.model), **cfg.tags})
    with start_run("embed", experiment=cfg.experiment, run_name=cfg.run_name, tags=tags) as run:
        log_params_flat({"embed": cfg.to_dict(), "settings": settings})
        log_metrics(
            {
                "n_cells": result.n_cells,
                "embedding_dim": result.embedding_dim,
                "seconds": result.seconds,
                "cells_per_s": result.cells_per_s,
            }
        )
        result.run_id = run.info.run_id
        mlflow.log_dict(redact_values(asdict(result)), "embed_result.json")
        if cfg.umap_color:
            table, emb = read_embeddings(result.output)
            labels = (
                np.asarray(table.column(cfg.umap_color).to_pylist(), dtype=object)
                if cfg.umap_color in table.column_names
                else None
            )
            if labels is None:
                log.warning("no column %r in the output: UMAP without colours", cfg.umap_color)
            fig = umap_figure(
                emb,
                labels,
                color_name=cfg.umap_color,
                title=f"{Path(cfg.source).name}: {cfg.model}",
                max_cells=cfg.umap_max_cells,
            )
            # beside the output folder, not in it: parquet readers of the folder stay happy
            # (an object-store output gets its plot in MLflow only, via a temporary file)
            umap_file = (
                Path(tempfile.mkdtemp(prefix="scfm-umap-")) / "umap.png"
                if is_uri(str(cfg.output))
                else out.with_name(out.name + "_umap.png")
            )
            fig.savefig(umap_file, dpi=120, bbox_inches="tight")
            result.umap_path = str(umap_file)
            log_figure(fig, "plots/umap.png")
