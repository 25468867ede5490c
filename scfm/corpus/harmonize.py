"""Harmonize one block of cells: :func:`map_block` (validate counts, map genes, QC sums in one
compiled pass), then :func:`pack_block` (QC decisions and the shard table).

The hot path is O(nnz), never a dense cells × 19,264 matrix.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from scfm.corpus.qc import CellStats, QCConfig, count_reasons, drop_reasons
from scfm.corpus.relabel import RelabelledRows, relabel_rows
from scfm.data.genes import N_GENES, GeneMapping
from scfm.data.validate import InputValidationError, check_counts

logger = logging.getLogger(__name__)

SPLIT_SALT = "scfm-split-v1"

# Cell metadata columns of the corpus (strings, null when the source does not know them).
METADATA_COLUMNS: tuple[str, ...] = (
    "cell_type",
    "cell_type_ontology_term_id",
    "tissue",
    "tissue_ontology_term_id",
    "assay",
    "assay_ontology_term_id",
    "disease",
    "disease_ontology_term_id",
    "donor_id",
    "sex",
    "development_stage",
    "suspension_type",
)

SCHEMA = pa.schema(
    [
        pa.field("cell_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("dataset_id", pa.string(), nullable=False),
        pa.field("obs_id", pa.string(), nullable=False),
        pa.field("gene_idx", pa.list_(pa.int16()), nullable=False),
        pa.field("counts", pa.list_(pa.float32()), nullable=False),
        pa.field("total_counts", pa.float64(), nullable=False),
        pa.field("n_genes", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        *[pa.field(c, pa.string()) for c in METADATA_COLUMNS],
    ],
    metadata={"scfm.corpus.schema": "1", "scfm.n_genes": str(N_GENES)},
)


@dataclass
class CellBlock:
    """A block of cells as read from a source: raw counts plus names and metadata.

    Attributes
    ----------
    X
        cells × input genes, CSR, raw counts.
    gene_ids
        Input gene identifiers (symbols or Ensembl ids), one per column.
    obs_ids
        Cell identifiers unique within the data set (barcode, Census ``observation_joinid``).
    obs
        Metadata, columns among :data:`METADATA_COLUMNS` (others are ignored).
    """

    X: sp.csr_matrix
    gene_ids: np.ndarray
    obs_ids: np.ndarray
    obs: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class HarmonizedBlock:
    """The kept cells as an Arrow table in :data:`SCHEMA`, plus what happened to the others."""

    table: pa.Table
    n_in: int
    n_kept: int
    dropped: dict[str, int]
    stats: CellStats
    kept: np.ndarray  # boolean mask over the input cells


@dataclass(frozen=True)
class _Lookup:
    labels: np.ndarray  # per input gene: vocabulary index or -1 (int32)
    mito: np.ndarray  # per input gene: maps to a mitochondrial vocabulary gene


_LOOKUPS: dict[int, tuple[GeneMapping, _Lookup]] = {}


def _lookup(mapping: GeneMapping) -> _Lookup:
    cached = _LOOKUPS.get(id(mapping))
    if cached is not None and cached[0] is mapping:
        return cached[1]
    idx = np.asarray(mapping.index)
    mito = np.zeros(len(idx), dtype=bool)
    mito[idx >= 0] = mapping.vocab.mito_mask[idx[idx >= 0]]
    lookup = _Lookup(idx.astype(np.int32), mito)
    if len(_LOOKUPS) > 16:
        _LOOKUPS.clear()
    _LOOKUPS[id(mapping)] = (mapping, lookup)
    return lookup


def map_block(X: sp.csr_matrix, mapping: GeneMapping) -> tuple[RelabelledRows, CellStats]:
    """Cells × input genes onto the vocabulary (sorted, collisions summed) and the QC numbers.

    One compiled pass over the nonzeros (:func:`scfm.corpus.relabel.relabel_rows`) that also
    checks the values are raw counts.

    Raises
    ------
    InputValidationError
        Empty or non-numeric matrix; negative, fractional, NaN or infinite values (the message
        of :func:`scfm.data.validate.check_counts`, which names the likely cause and the fix).
    """
    if not isinstance(X, sp.csr_matrix):
        X = sp.csr_matrix(X)
    if 0 in X.shape or not np.issubdtype(X.dtype, np.number):
        check_counts(X)  # raises with the full explanation
    lookup = _lookup(mapping)
    rows = relabel_rows(X, lookup.labels, lookup.mito)
    if rows.n_invalid:
        check_counts(X)  # raises with the full explanation
        raise InputValidationError(f"{rows.n_invalid:,} values are not raw counts")
    stats = CellStats(
        total_counts=rows.total_counts,
        n_genes_input=rows.n_nonzero_input,
        n_genes_vocab=rows.n_labels_per_row,
        mito_counts=rows.mito_counts,
    )
    return rows, stats


def split_of(cell_ids: Sequence[str], val_fraction: float) -> np.ndarray:
    """Deterministic ``train``/``val`` from a hash of each cell id (stable across runs/machines)."""
    threshold = int(val_fraction * 2**64)
    h = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{SPLIT_SALT}:{c}".encode(), digest_size=8).digest())
            < threshold
            for c in cell_ids
        ),
        dtype=bool,
        count=len(cell_ids),
    )
    return np.where(h, "val", "train")


def pack_block(
    block: CellBlock,
    rows: RelabelledRows,
    stats: CellStats,
    *,
    source: str,
    dataset_id: str,
    qc: QCConfig,
    val_fraction: float = 0.02,
) -> HarmonizedBlock:
    """QC a block mapped by :func:`map_block` and pack its kept cells into an Arrow table.

    The table follows :data:`SCHEMA`; the kept cells' nonzero vocabulary genes are stored sorted.
    """
    reason = drop_reasons(stats, qc)
    kept = reason < 0
    sub = rows.take_rows(kept)
    n_kept = int(kept.sum())
    obs_ids = np.asarray(block.obs_ids, dtype=str)[kept]
    prefix = f"{source}:{dataset_id}:"
    cell_ids = [prefix + o for o in obs_ids]
    offsets = pa.array(sub.indptr.astype(np.int32))
    columns: dict[str, pa.Array] = {
        "cell_id": pa.array(cell_ids, pa.string()),
        "source": pa.array([source] * n_kept, pa.string()),
        "dataset_id": pa.array([dataset_id] * n_kept, pa.string()),
        "obs_id": pa.array(obs_ids, pa.string()),
        "gene_idx": pa.ListArray.from_arrays(offsets, pa.array(sub.indices)),
        "counts": pa.ListArray.from_arrays(offsets, pa.array(sub.data)),
        "total_counts": pa.array(sub.total_counts, pa.float64()),
        "n_genes": pa.array(sub.n_labels_per_row.astype(np.int32)),
        "split": pa.array(split_of(cell_ids, val_fraction), pa.string()),
    }
    for col in METADATA_COLUMNS:
        if col in block.obs.columns:
            values = block.obs[col].to_numpy()[kept]
            columns[col] = pa.array(
                [None if pd.isna(v) or v == "" else str(v) for v in values], pa.string()
            )
        else:
            columns[col] = pa.nulls(n_kept, pa.string())
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    return HarmonizedBlock(
        table=table,
        n_in=block.X.shape[0],
        n_kept=n_kept,
        dropped=count_reasons(reason),
        stats=stats,
        kept=kept,
    )
