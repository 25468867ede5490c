"""Test fixture: a small Census-shaped tiledbsoma store built from real cells in ``shared/data``.

Written with :class:`scfm.corpus.census_store.CensusStoreWriter`. The layout follows the
CELLxGENE Census schema 2.0.0 (``docs/cellxgene_census_schema.md`` in
chanzuckerberg/cellxgene-census)::

    <root>/                              SOMACollection (the census object)
      census_info/                       SOMACollection
        summary                          SOMADataFrame  label, value
        datasets                         SOMADataFrame  citation, collection_id, collection_name,
                                                        collection_doi, dataset_id, dataset_title,
                                                        dataset_h5ad_path, dataset_total_cell_count,
                                                        dataset_version_id
        summary_cell_counts              SOMADataFrame  organism, category, label,
                                                        ontology_term_id, total_cell_count,
                                                        unique_cell_count
      census_data/                       SOMACollection
        homo_sapiens                     SOMAExperiment
          obs                            dataset_id, assay(_ontology_term_id), cell_type(...),
                                         ..., is_primary_data, observation_joinid, tissue_type,
                                         nnz, n_measured_vars, raw_sum, raw_mean_nnz,
                                         raw_variance_nnz
          ms['RNA'].var                  feature_id (Ensembl), feature_name, feature_length, nnz,
                                         n_measured_obs
          ms['RNA'].X['raw']             float32 counts, no explicit zeros
          ms['RNA']['feature_dataset_presence_matrix']   bool, datasets × features

It opens with ``cellxgene_census.open_soma(uri=root)``. The cells, counts and cell-type labels are
real (Kang 2018, pbmc68k, the 10x v3 example, Papalexi 2021); what the source files do not carry
is filled with the schema's ``"unknown"`` (donor, development stage, ethnicity, sex) or with
``0`` (``feature_length``, not in the GENCODE table we ship). Gene symbols become Ensembl ids
(``feature_id``) through GENCODE v44, then HGNC; symbols with neither are dropped, as Census only
holds genes of its pinned reference. ``dataset_id`` / ``dataset_version_id`` are UUIDv5 of the
data set name / name and version tag, so "changing" a data set gives a new version id.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm import datasets

logger = logging.getLogger(__name__)

CENSUS_SCHEMA_VERSION = "2.0.0"
DATASET_SCHEMA_VERSION = "5.0.0"
_NAMESPACE = uuid.UUID("5c0f6a34-6d1e-4cb1-9d0c-3f4a0b2e9a11")  # fixed: stable ids across builds

# Kang 2018 labels → Cell Ontology (label, id).
_KANG_CELL_TYPES = {
    "CD4T": ("CD4-positive, alpha-beta T cell", "CL:0000624"),
    "CD8T": ("CD8-positive, alpha-beta T cell", "CL:0000625"),
    "B": ("B cell", "CL:0000236"),
    "NK": ("natural killer cell", "CL:0000623"),
    "CD14+Mono": ("CD14-positive monocyte", "CL:0001054"),
    "FCGR3A+Mono": ("CD16-positive monocyte", "CL:0002396"),
    "Dendritic": ("dendritic cell", "CL:0000451"),
}
_BLOOD = {"tissue": ("blood", "UBERON:0000178"), "tissue_general": ("blood", "UBERON:0000178")}

OBS_STRING_COLUMNS = (
    "dataset_id",
    "assay",
    "assay_ontology_term_id",
    "cell_type",
    "cell_type_ontology_term_id",
    "development_stage",
    "development_stage_ontology_term_id",
    "disease",
    "disease_ontology_term_id",
    "donor_id",
    "observation_joinid",
    "self_reported_ethnicity",
    "self_reported_ethnicity_ontology_term_id",
    "sex",
    "sex_ontology_term_id",
    "suspension_type",
    "tissue",
    "tissue_ontology_term_id",
    "tissue_type",
    "tissue_general",
    "tissue_general_ontology_term_id",
)


@dataclass(frozen=True)
class FixtureDataset:
    """One Census data set of the fixture, cut from a real shared-data file.

    Attributes
    ----------
    name
        Stable name; ``dataset_id`` is derived from it.
    resource
        ``scfm.datasets`` resource name of the source file.
    cells
        ``(start, stop)`` row range of the source file to use (None: all cells).
    version
        Version tag; a new tag gives a new ``dataset_version_id`` (a re-published data set).
    is_primary_data
        False marks every cell as a duplicate of a cell published elsewhere (filtered out by
        primary-only queries, as in Census).
    obs_filter
        Optional ``(column, value)``: keep only source cells whose obs column equals value.
    """

    name: str
    resource: str
    cells: tuple[int, int] | None = None
    version: str = "1"
    is_primary_data: bool = True
    obs_filter: tuple[str, str] | None = None
    title: str = ""

    @property
    def dataset_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, self.name))

    @property
    def dataset_version_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.name}@{self.version}"))


# The default fixture: ~6,900 cells in six data sets, one of them non-primary duplicates.
DEFAULT_DATASETS: tuple[FixtureDataset, ...] = (
    FixtureDataset(
        "kang2018-control",
        "kang2018",
        obs_filter=("condition", "control"),
        title="Kang 2018 PBMC, control",
    ),
    FixtureDataset(
        "kang2018-stimulated",
        "kang2018",
        obs_filter=("condition", "stimulated"),
        title="Kang 2018 PBMC, IFN-beta stimulated",
    ),
    FixtureDataset("pbmc68k", "pbmc68k_counts", title="10x PBMC 68k (scanpy reduced subset)"),
    FixtureDataset("tenx-v3-chr21", "tenx_v3_h5", title="10x v3 example, chr21 genes"),
    FixtureDataset(
        "papalexi2021",
        "papalexi2021",
        cells=(0, 2000),
        title="Papalexi 2021 ECCITE-seq THP-1 (first 2,000 cells)",
    ),
    FixtureDataset(
        "kang2018-control-redeposit",
        "kang2018",
        cells=(0, 300),
        is_primary_data=False,
        title="Kang 2018 cells re-deposited (not primary)",
    ),
)


@dataclass
class _Part:
    spec: FixtureDataset
    X: sp.csr_matrix  # cells × feature ids of this part
    feature_ids: np.ndarray
    feature_names: np.ndarray
    obs: pd.DataFrame


@cache
def _symbol_to_ensembl() -> dict[str, str]:
    gencode = pd.read_csv(
        datasets.fetch("gencode_id2name"), header=None, names=["id", "name"], dtype=str
    )
    # A name with several ids (PAR genes, …): take the smallest id, deterministically.
    table = gencode.sort_values("id").drop_duplicates("name").set_index("name")["id"].to_dict()
    hgnc = pd.read_csv(
        datasets.fetch("hgnc"),
        usecols=["Status", "Approved symbol", "Alias symbol", "Previous symbol", "Ensembl gene ID"],
        dtype=str,
    )
    hgnc = hgnc[(hgnc["Status"] == "Approved") & hgnc["Ensembl gene ID"].notna()]
    for col in ("Approved symbol", "Previous symbol", "Alias symbol"):
        sub = hgnc[hgnc[col].notna()]
        ids = sub.groupby(col)["Ensembl gene ID"].nunique()
        unique = sub[sub[col].isin(ids[ids == 1].index)].drop_duplicates(col)
        for sym, ens in zip(unique[col], unique["Ensembl gene ID"], strict=True):
            table.setdefault(sym, ens)
    return table


def _observation_joinid(dataset_id: str, obs_name: str) -> str:
    digest = hashlib.blake2b(f"{dataset_id}/{obs_name}".encode(), digest_size=9).digest()
    return base64.b64encode(digest).decode()


def _source_obs(spec: FixtureDataset, obs: pd.DataFrame) -> pd.DataFrame:
    n = len(obs)
    unknown = np.full(n, "unknown", dtype=object)
    cols: dict[str, np.ndarray] = {c: unknown.copy() for c in OBS_STRING_COLUMNS}
    cols["dataset_id"] = np.full(n, spec.dataset_id, dtype=object)
    cols["suspension_type"] = np.full(n, "cell", dtype=object)
    cols["tissue_type"] = np.full(n, "tissue", dtype=object)
    cols["disease"] = np.full(n, "normal", dtype=object)
    cols["disease_ontology_term_id"] = np.full(n, "PATO:0000461", dtype=object)
    cols["observation_joinid"] = np.array(
        [_observation_joinid(spec.dataset_id, o) for o in obs.index], dtype=object
    )

    def fill(field_name: str, label: str, term: str) -> None:
        cols[field_name] = np.full(n, label, dtype=object)
        cols[f"{field_name}_ontology_term_id"] = np.full(n, term, dtype=object)

    if spec.resource == "kang2018":
        fill("assay", "10x 3' v2", "EFO:0009899")
        for k, (label, term) in _BLOOD.items():
            fill(k, label, term)
        labels = obs["cell_type"].astype(str).map(lambda c: _KANG_CELL_TYPES[c][0])
        terms = obs["cell_type"].astype(str).map(lambda c: _KANG_CELL_TYPES[c][1])
        cols["cell_type"] = labels.to_numpy(dtype=object)
        cols["cell_type_ontology_term_id"] = terms.to_numpy(dtype=object)
    elif spec.resource == "pbmc68k_counts":
        fill("assay", "10x 3' v1", "EFO:0009901")
        for k, (label, term) in _BLOOD.items():
            fill(k, label, term)
    elif spec.resource.startswith("tenx_v3"):
        fill("assay", "10x 3' v3", "EFO:0009922")
    elif spec.resource == "papalexi2021":
        # THP-1, a monocytic leukemia cell line: a cell culture, not primary tissue.
        fill("assay", "10x 5' transcription profiling", "EFO:0030004")
        cols["tissue_type"] = np.full(n, "cell culture", dtype=object)
        cols["donor_id"] = obs["bio_rep"].astype(str).to_numpy(dtype=object)
    return pd.DataFrame(cols, index=obs.index)


def _load_part(spec: FixtureDataset) -> _Part:
    from scfm.data.io import read_counts

    adata = read_counts(datasets.fetch(spec.resource))
    if spec.obs_filter is not None:
        col, value = spec.obs_filter
        adata = adata[adata.obs[col].astype(str).to_numpy() == value]
    if spec.cells is not None:
        adata = adata[spec.cells[0] : spec.cells[1]]
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    names = adata.var_names.astype(str).to_numpy()
    if names[0].startswith("ENSG"):
        feature_ids = names
        feature_names = (
            adata.var["gene_symbols"].astype(str).to_numpy()
            if "gene_symbols" in adata.var
            else names
        )
    else:
        table = _symbol_to_ensembl()
        feature_ids = np.array([table.get(s, "") for s in names], dtype=object)
        feature_names = names
    keep = feature_ids != ""
    logger.info("%s: %d of %d genes have an Ensembl id", spec.name, keep.sum(), len(keep))
    X, feature_ids, feature_names = X[:, keep], feature_ids[keep], feature_names[keep]
    # Two symbols with one Ensembl id (alias + approved): sum them, keeping all counts.
    uniq, inverse = np.unique(feature_ids, return_inverse=True)
    if len(uniq) < len(feature_ids):
        first = np.zeros(len(uniq), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]
        merge = sp.csr_matrix(
            (np.ones(len(inverse), np.float32), (np.arange(len(inverse)), inverse)),
            shape=(len(inverse), len(uniq)),
        )
        X = sp.csr_matrix(X @ merge)
        feature_ids, feature_names = uniq, feature_names[first]
    X.eliminate_zeros()
    X.sort_indices()
    return _Part(
        spec,
        X,
        np.asarray(feature_ids, dtype=str),
        np.asarray(feature_names, dtype=str),
        _source_obs(spec, adata.obs),
    )


@dataclass
class CensusFixture:
    """Where a fixture was written and what it holds."""

    uri: str
    datasets: tuple[FixtureDataset, ...]
    n_cells: int
    n_primary_cells: int
    n_features: int
    build_date: str = field(default_factory=lambda: date.today().isoformat())


def build_census_fixture(
    root: str | Path,
    specs: Sequence[FixtureDataset] = DEFAULT_DATASETS,
    *,
    build_date: str = "2025-01-30",
) -> CensusFixture:
    """Write a Census-shaped SOMA store at ``root`` from real shared-data cells.

    Parameters
    ----------
    root
        New directory (must not exist).
    specs
        The data sets, in ``soma_joinid`` order (Census stores each data set's cells contiguously).
    build_date
        Value of the ``census_build_date`` summary row (fixed default: reproducible stores).

    Returns
    -------
    CensusFixture
        The URI to pass to ``cellxgene_census.open_soma(uri=...)`` and counts.
    """
    import pyarrow as pa

    from scfm.corpus.census_store import CensusStoreWriter, arrow_type

    root = str(Path(root).resolve())
    parts = [_load_part(s) for s in specs]
    all_ids = np.unique(np.concatenate([p.feature_ids for p in parts]))
    names: dict[str, str] = {}
    for p in parts:
        names.update(zip(p.feature_ids, p.feature_names, strict=True))
    col_of = {f: i for i, f in enumerate(all_ids)}
    blocks = []
    for p in parts:
        cols = np.array([col_of[f] for f in p.feature_ids], dtype=np.int64)
        coo = p.X.tocoo()
        blocks.append(
            sp.csr_matrix((coo.data, (coo.row, cols[coo.col])), shape=(p.X.shape[0], len(all_ids)))
        )
    X = sp.vstack(blocks, format="csr").astype(np.float32)
    X.sort_indices()
    obs = pd.concat([p.obs for p in parts])
    obs.index = pd.Index([str(i) for i in range(len(obs))])
    is_primary = np.concatenate(
        [np.full(p.X.shape[0], p.spec.is_primary_data, dtype=bool) for p in parts]
    )
    obs["is_primary_data"] = is_primary
    row_nnz = np.diff(X.indptr)
    raw_sum = np.asarray(X.sum(axis=1)).ravel()
    sq = np.asarray(X.multiply(X).sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_nnz = np.where(row_nnz > 0, raw_sum / np.maximum(row_nnz, 1), 0.0)
        var_nnz = np.where(
            row_nnz > 1, (sq - row_nnz * mean_nnz**2) / np.maximum(row_nnz - 1, 1), 0.0
        )
    obs["nnz"] = row_nnz.astype(np.int64)
    obs["n_measured_vars"] = np.concatenate(
        [np.full(p.X.shape[0], len(p.feature_ids), dtype=np.int64) for p in parts]
    )
    obs["raw_sum"] = raw_sum.astype(np.float32)
    obs["raw_mean_nnz"] = mean_nnz.astype(np.float32)
    obs["raw_variance_nnz"] = var_nnz.astype(np.float32)

    presence = np.zeros((len(parts), len(all_ids)), dtype=bool)
    for d, p in enumerate(parts):
        presence[d, [col_of[f] for f in p.feature_ids]] = True
    var = pd.DataFrame(
        {
            "feature_id": all_ids,
            "feature_name": [names[f] for f in all_ids],
            "feature_length": np.zeros(len(all_ids), dtype=np.int64),
            "nnz": np.bincount(X.indices, minlength=len(all_ids)).astype(np.int64),
            "n_measured_obs": (
                presence.T.astype(np.int64)
                @ np.array([p.X.shape[0] for p in parts], dtype=np.int64)
            ),
        },
        index=pd.Index([str(i) for i in range(len(all_ids))]),
    )

    writer = CensusStoreWriter(
        root, n_cells=len(obs), var=var, obs_types={c: arrow_type(obs[c]) for c in obs.columns}
    )
    writer.write_cells(X, obs)
    writer.write_presence(presence)

    n_primary = int(is_primary.sum())
    datasets_table = pa.Table.from_pydict(
        {
            "soma_joinid": np.arange(len(parts), dtype=np.int64),
            "citation": [f"scfm test fixture from shared/data ({p.spec.resource})" for p in parts],
            "collection_id": [
                str(uuid.uuid5(_NAMESPACE, "collection/" + p.spec.resource)) for p in parts
            ],
            "collection_name": [p.spec.resource for p in parts],
            "collection_doi": ["" for _ in parts],
            "dataset_id": [p.spec.dataset_id for p in parts],
            "dataset_version_id": [p.spec.dataset_version_id for p in parts],
            "dataset_title": [p.spec.title or p.spec.name for p in parts],
            "dataset_h5ad_path": [f"{p.spec.dataset_id}.h5ad" for p in parts],
            "dataset_total_cell_count": np.array([p.X.shape[0] for p in parts], dtype=np.int64),
        }
    )
    summary = pa.Table.from_pydict(
        {
            "soma_joinid": np.arange(7, dtype=np.int64),
            "label": [
                "census_schema_version",
                "census_build_date",
                "dataset_schema_version",
                "total_cell_count",
                "unique_cell_count",
                "number_donors_homo_sapiens",
                "number_donors_mus_musculus",
            ],
            "value": [
                CENSUS_SCHEMA_VERSION,
                build_date,
                DATASET_SCHEMA_VERSION,
                str(len(obs)),
                str(n_primary),
                str(obs["donor_id"].nunique()),
                "0",
            ],
        }
    )
    writer.write_info(
        {
            "summary": summary,
            "datasets": datasets_table,
            "summary_cell_counts": _summary_cell_counts(obs),
        }
    )
    logger.info(
        "Census fixture at %s: %d cells (%d primary), %d features",
        root,
        len(obs),
        n_primary,
        len(all_ids),
    )
    return CensusFixture(root, tuple(specs), len(obs), n_primary, len(all_ids), build_date)


def _summary_cell_counts(obs: pd.DataFrame):
    import pyarrow as pa

    rows = [("Homo sapiens", "all", "na", "na", len(obs), int(obs["is_primary_data"].sum()))]
    for cat in (
        "cell_type",
        "assay",
        "tissue",
        "tissue_general",
        "disease",
        "self_reported_ethnicity",
        "sex",
        "suspension_type",
    ):
        term_col = f"{cat}_ontology_term_id"
        keys = [cat] + ([term_col] if term_col in obs else [])
        for key, grp in obs.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            term = key[1] if len(key) > 1 else "na"
            rows.append(
                ("Homo sapiens", cat, key[0], term, len(grp), int(grp["is_primary_data"].sum()))
            )
    cols = list(zip(*rows, strict=True))
    return pa.Table.from_pydict(
        {
            "soma_joinid": np.arange(len(rows), dtype=np.int64),
            "organism": list(cols[0]),
            "category": list(cols[1]),
            "label": list(cols[2]),
            "ontology_term_id": list(cols[3]),
            "total_cell_count": np.array(cols[4], dtype=np.int64),
            "unique_cell_count": np.array(cols[5], dtype=np.int64),
        }
    )
