"""Read expression data from h5ad, 10x MEX directories and 10x HDF5 files into AnnData.

10x files are read by small dedicated readers (scipy + h5py) so that importing scfm does not
import scanpy. Ensembl ids become ``var_names`` (unique and species-explicit); symbols are kept in
``var["gene_symbols"]``. Unreadable files raise :class:`CorruptInputError` naming the file.
"""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

logger = logging.getLogger(__name__)

InputFormat = Literal["h5ad", "10x_mtx", "10x_h5"]


class CorruptInputError(ValueError):
    """An input file exists but cannot be read as the format it claims to be."""


def detect_format(path: str | Path) -> InputFormat:
    """Guess the input format from a path: ``.h5ad``, a 10x MEX directory, or a 10x ``.h5``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_dir():
        if any((p / f"{stem}.mtx{gz}").exists() for stem in ("matrix",) for gz in ("", ".gz")):
            return "10x_mtx"
        raise ValueError(
            f"{p} is a directory without matrix.mtx(.gz): pass a 10x MEX directory "
            "(matrix.mtx, features.tsv/genes.tsv, barcodes.tsv), an .h5ad or a 10x .h5 file"
        )
    suffix = p.name.lower()
    if suffix.endswith(".h5ad"):
        return "h5ad"
    if suffix.endswith(".h5") or suffix.endswith(".hdf5"):
        return "10x_h5"
    raise ValueError(f"{p}: unknown input format; expected .h5ad, .h5 (10x) or a 10x directory")


def read_counts(
    path: str | Path,
    *,
    layer: str | None = None,
    backed: bool = False,
    genome: str | None = None,
) -> ad.AnnData:
    """Read a count matrix from any supported input.

    Parameters
    ----------
    path
        ``.h5ad`` file, 10x MEX directory, or 10x HDF5 (``.h5``) file.
    layer
        For h5ad: the layer holding raw counts (``"raw"`` means ``adata.raw.X``); default ``X``.
        The chosen matrix is moved into ``X``.
    backed
        Open an h5ad in backed (read-only) mode so ``X`` stays on disk. Only with ``layer=None``.
    genome
        For 10x HDF5 files with several genomes: which one to read.
    """
    fmt = detect_format(path)
    if fmt == "h5ad":
        return _read_h5ad(Path(path), layer=layer, backed=backed)
    if layer is not None:
        raise ValueError(f"layer={layer!r} only applies to .h5ad inputs")
    if fmt == "10x_mtx":
        return read_10x_mtx(path)
    return read_10x_h5(path, genome=genome)


def _read_h5ad(path: Path, *, layer: str | None, backed: bool) -> ad.AnnData:
    if backed and layer is not None:
        raise ValueError("backed=True reads X only; pass layer=None or backed=False")
    try:
        with warnings.catch_warnings():
            # Old h5ad files raise anndata "moving element" FutureWarnings; not actionable.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*(old|very old) version of AnnData")
            warnings.filterwarnings("ignore", message=".*without encoding metadata")
            adata = ad.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CorruptInputError(f"cannot read {path} as h5ad: {exc}") from exc
    if layer is None:
        return adata
    if layer == "raw":
        if adata.raw is None:
            raise ValueError(f"{path} has no .raw; layers are: {list(adata.layers)}")
        return ad.AnnData(X=adata.raw.X, obs=adata.obs, var=adata.raw.var)
    if layer not in adata.layers:
        raise ValueError(
            f"{path} has no layer {layer!r}; layers are: {list(adata.layers) or 'none'}"
            " (use layer=None for X or 'raw' for .raw)"
        )
    return ad.AnnData(X=adata.layers[layer], obs=adata.obs, var=adata.var)


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def _first_existing(directory: Path, names: list[str]) -> Path:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"{directory}: none of {names} (or .gz) found")


def read_10x_mtx(directory: str | Path) -> ad.AnnData:
    """Read a Cell Ranger MEX directory (v1/v2 ``genes.tsv`` or v3 ``features.tsv.gz``)."""
    d = Path(directory)
    mtx = _first_existing(d, ["matrix.mtx"])
    features = _first_existing(d, ["features.tsv", "genes.tsv"])
    barcodes = _first_existing(d, ["barcodes.tsv"])
    try:
        with _open_text(mtx) if mtx.name.endswith(".gz") else open(mtx, "rb") as fh:
            X = sp.csr_matrix(scipy.io.mmread(fh).T)  # MEX is genes × cells
        feat = pd.read_csv(features, sep="\t", header=None, dtype=str)
        bc = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)[0]
    except (OSError, ValueError, EOFError, IndexError) as exc:
        raise CorruptInputError(f"cannot read 10x directory {d}: {exc}") from exc
    if X.shape != (len(bc), len(feat)):
        raise CorruptInputError(
            f"{d}: matrix is {X.shape[1]} genes × {X.shape[0]} cells but there are "
            f"{len(feat)} features and {len(bc)} barcodes"
        )
    var = pd.DataFrame({"gene_symbols": feat[1].to_numpy()}, index=feat[0].to_numpy())
    if feat.shape[1] > 2:
        var["feature_types"] = feat[2].to_numpy()
    return _tenx_anndata(X, bc.to_numpy(), var)


def tenx_h5_meta(
    path: str | Path, *, genome: str | None = None
) -> tuple[str, np.ndarray, pd.DataFrame, np.ndarray]:
    """Layout of a Cell Ranger HDF5 file without its matrix: ``(group, barcodes, var, columns)``.

    ``group`` holds the genes × cells CSC matrix; ``columns`` is the boolean mask of features
    kept (the genome asked for, Gene Expression only); ``var`` describes the kept features.
    """
    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            if "matrix" in f:
                name = "matrix"
                feats = f[name]["features"]
                var = pd.DataFrame(
                    {
                        "gene_symbols": _strings(feats["name"]),
                        "feature_types": _strings(feats["feature_type"]),
                        "genome": _strings(feats["genome"]),
                    },
                    index=_strings(feats["id"]),
                )
                keep = np.ones(len(var), dtype=bool)
                if genome is not None:
                    keep = var["genome"].to_numpy() == genome
                    if not keep.any():
                        raise ValueError(
                            f"{p}: no genome {genome!r}; has {sorted(set(var['genome']))}"
                        )
            else:
                genomes = [k for k, g in f.items() if isinstance(g, h5py.Group) and "indptr" in g]
                if not genomes:
                    raise CorruptInputError(
                        f"{p} is HDF5 but not in a 10x layout (no 'matrix' or genome group)"
                    )
                if genome is None:
                    if len(genomes) != 1:
                        raise ValueError(
                            f"{p} holds several genomes {genomes}: pick one with genome=..."
                        )
                    genome = genomes[0]
                if genome not in f:
                    raise ValueError(f"{p}: no genome {genome!r}; has {genomes}")
                name = genome
                group = f[name]
                var = pd.DataFrame(
                    {"gene_symbols": _strings(group["gene_names"])}, index=_strings(group["genes"])
                )
                keep = np.ones(len(var), dtype=bool)
            barcodes = _strings(f[name]["barcodes"])
    except OSError as exc:
        raise CorruptInputError(f"cannot read {p} as a 10x HDF5 file: {exc}") from exc
    except KeyError as exc:
        raise CorruptInputError(f"{p} is HDF5 but not in a 10x layout (missing {exc})") from exc
    if "feature_types" in var:
        gex = var["feature_types"].to_numpy() == "Gene Expression"
        if not gex[keep].all():
            logger.info("keeping %d Gene Expression features of %d", (gex & keep).sum(), keep.sum())
        keep = keep & gex
    return name, barcodes, var[keep], keep


def tenx_mtx_meta(directory: str | Path) -> tuple[Path, np.ndarray, pd.DataFrame, np.ndarray]:
    """Layout of a MEX directory without its matrix: ``(matrix file, barcodes, var, columns)``.

    ``columns`` masks the features kept (Gene Expression only, as :func:`read_10x_mtx`).
    """
    d = Path(directory)
    mtx = _first_existing(d, ["matrix.mtx"])
    features = _first_existing(d, ["features.tsv", "genes.tsv"])
    barcodes = _first_existing(d, ["barcodes.tsv"])
    try:
        feat = pd.read_csv(features, sep="\t", header=None, dtype=str)
        bc = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)[0]
    except (OSError, ValueError, EOFError, IndexError) as exc:
        raise CorruptInputError(f"cannot read 10x directory {d}: {exc}") from exc
    var = pd.DataFrame({"gene_symbols": feat[1].to_numpy()}, index=feat[0].to_numpy())
    keep = np.ones(len(var), dtype=bool)
    if feat.shape[1] > 2:
        var["feature_types"] = feat[2].to_numpy()
        keep = var["feature_types"].to_numpy() == "Gene Expression"
    return mtx, bc.to_numpy(), var[keep], keep


def read_10x_h5(path: str | Path, *, genome: str | None = None) -> ad.AnnData:
    """Read a Cell Ranger HDF5 file (v2 per-genome groups or v3 ``matrix`` group)."""
    p = Path(path)
    name, barcodes, var, keep = tenx_h5_meta(p, genome=genome)
    try:
        with h5py.File(p, "r") as f:
            group = f[name]
            n_genes, n_cells = (int(v) for v in group["shape"][()])
            # CSC over genes × cells is CSR over cells × genes.
            X = sp.csr_matrix(
                (group["data"][()], group["indices"][()], group["indptr"][()]),
                shape=(n_cells, n_genes),
            )
    except OSError as exc:
        raise CorruptInputError(f"cannot read {p} as a 10x HDF5 file: {exc}") from exc
    except KeyError as exc:
        raise CorruptInputError(f"{p} is HDF5 but not in a 10x layout (missing {exc})") from exc
    if not keep.all():
        X = X[:, keep]
    return _tenx_anndata(X, barcodes, var)


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()]])


def _tenx_anndata(X: sp.csr_matrix, barcodes: np.ndarray, var: pd.DataFrame) -> ad.AnnData:
    if "feature_types" in var:
        gex = var["feature_types"].to_numpy() == "Gene Expression"
        if not gex.all():
            logger.info("keeping %d Gene Expression features of %d", gex.sum(), len(gex))
            X, var = X[:, gex], var[gex]
    # Cell Ranger stores integer UMI counts; keep them as int32 (mmread gives int64 or float64).
    integral = np.issubdtype(X.dtype, np.integer) or (X.nnz and np.all(X.data == np.rint(X.data)))
    if integral and (not X.nnz or X.data.max() < np.iinfo(np.int32).max):
        X = X.astype(np.int32)
    return ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)), var=var)
