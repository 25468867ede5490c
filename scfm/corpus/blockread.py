"""Row blocks of on-disk count matrices, read without loading the whole matrix.

=========================  ================================================================
h5ad CSR (``X``, a layer, ``raw/X``)  ``indptr[start:stop+1]``, then that slice of ``data`` /
                           ``indices``: the block only.
h5ad CSC                   column chunks of at most :data:`CHUNK_NNZ` stored values, keeping the
                           entries of rows ``[start, stop)``: memory bounded by one chunk plus
                           the block (the whole matrix is scanned once per block).
h5ad dense                 ``X[start:stop]``.
10x ``.h5``                Cell Ranger stores genes × cells CSC, so a block of cells is a
                           contiguous ``indptr`` slice: the block only.
10x MEX                    the coordinate file streamed in chunks of :data:`MEX_CHUNK_LINES`
                           entries, keeping the block's cells (memory: one chunk plus the block;
                           the text is parsed once per block).
=========================  ================================================================
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

MEX_CHUNK_LINES = 1_000_000  # coordinate lines parsed at a time
CHUNK_NNZ = 1_000_000  # stored values per column chunk of a CSC matrix (~8 MB read at a time)


def h5ad_key(layer: str | None) -> str:
    """HDF5 path of the matrix: ``X`` (None), ``raw/X`` (``"raw"``) or ``layers/<layer>``."""
    if layer is None:
        return "X"
    return "raw/X" if layer == "raw" else f"layers/{layer}"


def _encoding(node) -> str:
    enc = node.attrs.get("encoding-type") or node.attrs.get("h5sparse_format") or ""
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    return "csc" if enc.startswith("csc") else "csr"


def _shape(node) -> tuple[int, int]:
    shape = node.attrs.get("shape")
    if shape is None:
        shape = node.attrs["h5sparse_shape"]
    return int(shape[0]), int(shape[1])


def _integral(data: np.ndarray) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer) or not data.size:
        return data
    return data.astype(np.int32) if np.all(data == np.rint(data)) and data.max() < 2**31 else data


def read_h5ad_rows(path: str | Path, layer: str | None, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of an h5ad matrix (CSR, CSC or dense), as CSR."""
    with h5py.File(path, "r") as f:
        node = f[h5ad_key(layer)]
        if isinstance(node, h5py.Dataset):
            return sp.csr_matrix(node[start:stop])
        n_rows, n_cols = _shape(node)
        if _encoding(node) == "csr":
            indptr = node["indptr"][start : stop + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            return sp.csr_matrix(
                (node["data"][lo:hi], node["indices"][lo:hi], indptr - lo),
                shape=(stop - start, n_cols),
            )
        return _csc_rows(node, start, stop, n_cols)


def _csc_rows(node, start: int, stop: int, n_cols: int) -> sp.csr_matrix:
    indptr = node["indptr"][()].astype(np.int64)  # one entry per gene: small
    rows, cols, vals = [], [], []
    c0 = 0
    while c0 < n_cols:
        # as many columns as fit in CHUNK_NNZ stored values (at least one)
        c1 = max(int(np.searchsorted(indptr, indptr[c0] + CHUNK_NNZ, side="right")) - 1, c0 + 1)
        c1 = min(c1, n_cols)
        lo, hi = int(indptr[c0]), int(indptr[c1])
        r = node["indices"][lo:hi]
        keep = np.flatnonzero((r >= start) & (r < stop))
        if len(keep):
            rows.append(r[keep] - start)
            cols.append(np.searchsorted(indptr, lo + keep, side="right") - 1)
            vals.append(node["data"][lo:hi][keep])
        c0 = c1
    dtype = node["data"].dtype
    out = sp.csr_matrix(
        (
            np.concatenate(vals) if vals else np.zeros(0, dtype),
            (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
            ),
        ),
        shape=(stop - start, n_cols),
    )
    out.sort_indices()
    return out


def read_10x_h5_rows(
    path: str | Path, group: str, start: int, stop: int, columns: np.ndarray | None
) -> sp.csr_matrix:
    """Cells ``[start, stop)`` of a Cell Ranger ``.h5`` group (genes × cells CSC) as CSR.

    ``columns``: boolean mask of the features to keep (genome, Gene Expression), or None.
    """
    with h5py.File(path, "r") as f:
        g = f[group]
        n_genes = int(g["shape"][0])
        indptr = g["indptr"][start : stop + 1].astype(np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        X = sp.csr_matrix(
            (_integral(g["data"][lo:hi]), g["indices"][lo:hi], indptr - lo),
            shape=(stop - start, n_genes),
        )
    return X[:, columns] if columns is not None and not columns.all() else X


def read_mex_rows(
    mtx: str | Path, start: int, stop: int, n_genes: int, n_cells: int, columns: np.ndarray
) -> sp.csr_matrix:
    """Cells ``[start, stop)`` of a MatrixMarket coordinate file (genes × cells, 1-based) as CSR.

    ``columns``: boolean mask of the features kept. Raises ``ValueError`` when the header's size
    is not ``n_genes × n_cells`` (the features / barcodes files).
    """
    import gzip

    import pandas as pd

    path = Path(mtx)
    opener = gzip.open if path.name.endswith(".gz") else open
    rows, cols, vals = [], [], []
    with opener(path, "rt") as fh:
        line = fh.readline()
        while line.startswith("%"):
            line = fh.readline()
        g, c, _ = (int(x) for x in line.split())
        if (g, c) != (n_genes, n_cells):
            raise ValueError(
                f"{path}: matrix is {g} genes × {c} cells but there are {n_genes} features and "
                f"{n_cells} barcodes"
            )
        reader = pd.read_csv(
            fh, sep=" ", header=None, names=["g", "c", "v"], chunksize=MEX_CHUNK_LINES,
            dtype={"g": np.int32, "c": np.int64, "v": np.float64},
        )  # fmt: skip
        for chunk in reader:
            cell = chunk["c"].to_numpy()
            keep = np.flatnonzero((cell > start) & (cell <= stop))
            if len(keep):
                rows.append(cell[keep] - 1 - start)
                cols.append(chunk["g"].to_numpy()[keep] - 1)
                vals.append(chunk["v"].to_numpy()[keep])
    data = np.concatenate(vals) if vals else np.zeros(0)
    out = sp.csr_matrix(
        (
            _integral(data),
            (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
            ),
        ),
        shape=(stop - start, n_genes),
    )
    out.sum_duplicates()
    return out[:, columns] if not columns.all() else out
