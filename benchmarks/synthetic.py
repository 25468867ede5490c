"""Bigger corpora for benchmarks, resampled from real cells (never passed off as real data).

A synthetic cell is a binomial thinning (probability ``p``) of one of 4,096 pooled profiles, each
the sum of ``k`` real Kang 2018 PBMCs of one cell type: genes, count distributions and cell-type
structure come from real cells, and ``(k, p)`` are chosen so that the mean number of nonzero
genes per cell hits a target (Census-like density is ~2,000). Every synthetic cell is labelled
(``assay = "synthetic"``, data set titles say "synthetic"): nobody mistakes it for measured data.

Outputs, written chunk by chunk (memory independent of size):

* ``write_h5ad_dir``: a directory of ``.h5ad`` files (one data set each).
* ``write_census_store``: a Census-shaped SOMA store (``census_info`` + ``census_data/homo_sapiens``
  with ``X['raw']``), opened like the test fixture with ``cellxgene_census.open_soma(uri=...)``.

Command line: ``python benchmarks/synthetic.py --cells 1000000 --format soma --out bench/census``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: tests/

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("0b4f2f0e-8a8e-4f7e-9d55-5b7f1b3c1e42")
OBS_COLUMNS = ("dataset_id", "observation_joinid", "cell_type", "assay", "tissue", "donor_id")


@dataclass(frozen=True)
class Pool:
    """The real cells synthetic cells are drawn from."""

    X: sp.csr_matrix  # cells × genes, int64 counts
    feature_ids: np.ndarray  # Ensembl ids (for SOMA var) — same order as columns
    feature_names: np.ndarray
    cell_type: np.ndarray


def load_pool() -> Pool:
    """Kang 2018 counts restricted to genes with an Ensembl id (as in the Census fixture)."""
    from tests.census_fixture import FixtureDataset, _load_part

    part = _load_part(FixtureDataset("kang2018-all", "kang2018"))
    return Pool(
        X=sp.csr_matrix(part.X).astype(np.int64),
        feature_ids=part.feature_ids,
        feature_names=part.feature_names,
        cell_type=part.obs["cell_type"].astype(str).to_numpy(),
    )


def calibrate(pool: Pool, target_nnz: float, seed: int = 0, probe: int = 1000) -> tuple[int, float]:
    """Smallest pool size ``k`` (with ``p = 0.7``) whose mean nonzeros per cell reach the target."""
    rng = np.random.default_rng(seed)
    p = 0.7
    for k in range(1, 65):
        Y = _resample(pool, probe, k, p, rng)
        if np.diff(Y.indptr).mean() >= target_nnz:
            return k, p
    return 64, p


def _resample(pool: Pool, n: int, k: int, p: float, rng: np.random.Generator) -> sp.csr_matrix:
    types, inverse = np.unique(pool.cell_type, return_inverse=True)
    members = [np.flatnonzero(inverse == t) for t in range(len(types))]
    cell_t = rng.integers(0, len(types), size=n)
    idx = np.empty((n, k), dtype=np.int64)
    for t, m in enumerate(members):
        rows = np.flatnonzero(cell_t == t)
        idx[rows] = m[rng.integers(0, len(m), size=(len(rows), k))]
    S = sp.csr_matrix(
        (np.ones(n * k, np.int64), idx.ravel(), np.arange(0, n * k + 1, k)),
        shape=(n, pool.X.shape[0]),
    )
    Y = sp.csr_matrix(S @ pool.X)
    if p < 1.0:
        Y.data = thin(Y.data, p, rng)
    Y.eliminate_zeros()
    Y.sort_indices()
    Y._scfm_types = types[cell_t]  # type: ignore[attr-defined]  # carried to the caller
    return Y


def thin(counts: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning of integer counts; Bernoulli draws for the (many) ones are ~10× cheaper."""
    out = np.empty(counts.shape, dtype=np.int64)
    ones = counts == 1
    out[ones] = rng.random(int(ones.sum())) < p
    out[~ones] = rng.binomial(counts[~ones].astype(np.int64), p)
    return out


def synthetic_chunks(
    pool: Pool,
    n_cells: int,
    *,
    k: int,
    p: float,
    seed: int = 0,
    chunk_cells: int = 10_000,
    n_meta: int = 4096,
) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """Yield ``(counts CSR float32, cell types)`` chunks totalling ``n_cells``.

    ``n_meta`` pooled profiles (sums of ``k`` same-type real cells) are made once; each synthetic
    cell is an independent binomial thinning (``p``) of a random one.
    """
    rng = np.random.default_rng(seed)
    meta = _resample(pool, n_meta, k, 1.0, rng)
    meta_types = meta._scfm_types  # type: ignore[attr-defined]
    for start in range(0, n_cells, chunk_cells):
        n = min(chunk_cells, n_cells - start)
        pick = rng.integers(0, n_meta, size=n)
        Y = meta[pick]
        Y.data = thin(Y.data, p, rng)
        Y.eliminate_zeros()
        yield sp.csr_matrix(Y, dtype=np.float32), meta_types[pick]


def write_h5ad_dir(
    out: str | Path,
    n_cells: int,
    *,
    target_nnz: float = 2000,
    cells_per_file: int = 50_000,
    seed: int = 0,
) -> dict:
    """Write ``ceil(n_cells / cells_per_file)`` synthetic ``.h5ad`` files (gene symbols as var)."""
    import anndata as ad

    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    pool = load_pool()
    k, p = calibrate(pool, target_nnz, seed)
    nnz = 0
    for f, start in enumerate(range(0, n_cells, cells_per_file)):
        n = min(cells_per_file, n_cells - start)
        parts = list(synthetic_chunks(pool, n, k=k, p=p, seed=seed + f))
        X = sp.vstack([x for x, _ in parts], format="csr")
        types = np.concatenate([t for _, t in parts])
        nnz += X.nnz
        obs = pd.DataFrame(
            {"cell_type": types, "assay": "synthetic"},
            index=pd.Index([f"syn{f:04d}-{i}" for i in range(n)]),
        )
        var = pd.DataFrame(index=pd.Index(pool.feature_names))
        ad.AnnData(X=X.astype(np.int32), obs=obs, var=var).write_h5ad(
            out / f"synthetic-{f:04d}.h5ad"
        )
    return {"n_cells": n_cells, "k": k, "p": p, "nnz_per_cell": nnz / max(n_cells, 1)}


def write_census_store(
    root: str | Path,
    n_cells: int,
    *,
    target_nnz: float = 2000,
    cells_per_dataset: int = 100_000,
    chunk_cells: int = 10_000,
    seed: int = 0,
) -> dict:
    """Write a Census-shaped SOMA store of synthetic cells, chunk by chunk."""
    import pyarrow as pa

    from scfm.corpus.census_store import CensusStoreWriter

    pool = load_pool()
    k, p = calibrate(pool, target_nnz, seed)
    n_var = len(pool.feature_ids)
    n_ds = -(-n_cells // cells_per_dataset)
    ds_ids = [str(uuid.uuid5(_NAMESPACE, f"synthetic-{d}")) for d in range(n_ds)]
    var = pd.DataFrame(
        {
            "feature_id": pool.feature_ids,
            "feature_name": pool.feature_names,
            "feature_length": np.zeros(n_var, dtype=np.int64),
        }
    )
    obs_types = {c: pa.large_string() for c in OBS_COLUMNS} | {
        "is_primary_data": pa.bool_(),
        "nnz": pa.int64(),
        "raw_sum": pa.float32(),
    }
    writer = CensusStoreWriter(root, n_cells=n_cells, var=var, obs_types=obs_types)
    t0 = time.perf_counter()
    nnz_total = 0
    start = 0
    for chunk, types in synthetic_chunks(
        pool, n_cells, k=k, p=p, seed=seed, chunk_cells=chunk_cells
    ):
        n = chunk.shape[0]
        joinids = np.arange(start, start + n, dtype=np.int64)
        obs = pd.DataFrame(
            {
                "dataset_id": np.array(ds_ids, dtype=object)[joinids // cells_per_dataset],
                "observation_joinid": [f"s{j}" for j in joinids],
                "cell_type": types,
                "assay": "synthetic",
                "tissue": "blood",
                "donor_id": "unknown",
                "is_primary_data": True,
                "nnz": np.diff(chunk.indptr).astype(np.int64),
                "raw_sum": np.asarray(chunk.sum(axis=1)).ravel().astype(np.float32),
            }
        )
        writer.write_cells(chunk, obs)
        nnz_total += chunk.nnz
        start += n
        logger.info(
            "%d / %d cells (%.0f cells/s)", start, n_cells, start / (time.perf_counter() - t0)
        )

    counts = [min(cells_per_dataset, n_cells - d * cells_per_dataset) for d in range(n_ds)]
    tables = {
        "summary": pa.Table.from_pydict(
            {
                "soma_joinid": np.arange(3, dtype=np.int64),
                "label": ["census_schema_version", "census_build_date", "total_cell_count"],
                "value": ["2.0.0", "synthetic", str(n_cells)],
            }
        ),
        "datasets": pa.Table.from_pydict(
            {
                "soma_joinid": np.arange(n_ds, dtype=np.int64),
                "citation": ["synthetic: resampled Kang 2018 PBMCs (scfm benchmark)"] * n_ds,
                "collection_id": [str(uuid.uuid5(_NAMESPACE, "synthetic"))] * n_ds,
                "collection_name": ["scfm synthetic benchmark corpus"] * n_ds,
                "collection_doi": [""] * n_ds,
                "dataset_id": ds_ids,
                "dataset_version_id": [str(uuid.uuid5(_NAMESPACE, f"{d}@1")) for d in ds_ids],
                "dataset_title": [f"synthetic {d}" for d in range(n_ds)],
                "dataset_h5ad_path": [f"{d}.h5ad" for d in ds_ids],
                "dataset_total_cell_count": np.array(counts, dtype=np.int64),
            }
        ),
    }
    writer.write_info(tables)
    return {
        "uri": writer.root,
        "n_cells": n_cells,
        "k": k,
        "p": p,
        "nnz_per_cell": nnz_total / max(n_cells, 1),
        "n_datasets": n_ds,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--format", choices=["soma", "h5ad"], default="soma")
    parser.add_argument("--nnz", type=float, default=2000, help="target nonzero genes per cell")
    parser.add_argument("--cells-per-dataset", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fmt: Literal["soma", "h5ad"] = args.format
    if fmt == "soma":
        info = write_census_store(
            args.out,
            args.cells,
            target_nnz=args.nnz,
            cells_per_dataset=args.cells_per_dataset,
            seed=args.seed,
        )
    else:
        info = write_h5ad_dir(
            args.out,
            args.cells,
            target_nnz=args.nnz,
            cells_per_file=args.cells_per_dataset,
            seed=args.seed,
        )
    logger.info("wrote %s", info)


if __name__ == "__main__":
    main()
