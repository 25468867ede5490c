"""Corpus manifests: the commit point of every build or refresh.

A manifest is one JSON file, ``manifests/manifest-<version>.json``, written atomically after all
of its shards. Readers take the highest version present and trust only the shards it lists, so
a killed build (shards written, no manifest yet) is invisible, and a finished one appears at once.

Manifest fields (``FORMAT_VERSION`` 1)::

    format, format_version, corpus_version, parent_version, kind ("build" | "refresh"),
    created (UTC ISO), code_version, vocab_checksum, n_vocab_genes, schema (column: type),
    config (qc, val_fraction, min_mapped_fraction, block_cells, max_cells_per_shard),
    fingerprint (config + code identity the shards were made with),
    sources: [{name, kind, spec, release, fingerprint}],
    datasets: [{source, dataset_id, version, status: "ok", n_cells_in, n_cells_kept,
                dropped: {reason: n}, genes: {mapping summary}, shards: [{path, n_cells, bytes}],
                info}],
    quarantined: [{source, dataset_id, version, stage, error}],
    changes: {added, changed, removed, unchanged}   (refresh: lists of "source:dataset_id")
    totals: {n_datasets, n_quarantined, n_cells_in, n_cells_kept, dropped, n_shards, bytes,
             n_cells_train, n_cells_val}
"""

from __future__ import annotations

import logging
import re

import pyarrow.fs as pafs

from scfm.corpus.shards import atomic_write_json, exists, join, read_json

logger = logging.getLogger(__name__)

FORMAT = "scfm-corpus"
FORMAT_VERSION = 1
MANIFEST_DIR = "manifests"
_NAME_RE = re.compile(r"^manifest-(\d{6,})\.json$")


def manifest_path(root: str, version: int) -> str:
    return join(root, MANIFEST_DIR, f"manifest-{version:06d}.json")


def list_versions(fs: pafs.FileSystem, root: str) -> list[int]:
    """Committed corpus versions, ascending (temporary files are ignored)."""
    base = join(root, MANIFEST_DIR)
    if not exists(fs, base):
        return []
    versions = []
    for info in fs.get_file_info(pafs.FileSelector(base)):
        m = _NAME_RE.match(info.base_name)
        if m and info.type == pafs.FileType.File:
            versions.append(int(m.group(1)))
    return sorted(versions)


def load_manifest(fs: pafs.FileSystem, root: str, version: int | None = None) -> dict | None:
    """The manifest of ``version`` (default: the newest), or None when there is none."""
    versions = list_versions(fs, root)
    if version is None:
        if not versions:
            return None
        version = versions[-1]
    elif version not in versions:
        raise FileNotFoundError(f"corpus {root} has no version {version}; has {versions}")
    manifest = read_json(fs, manifest_path(root, version))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path(root, version)} is not an {FORMAT} manifest")
    return manifest


def commit_manifest(fs: pafs.FileSystem, root: str, manifest: dict) -> str:
    """Write a manifest atomically; refuses to overwrite a committed version."""
    path = manifest_path(root, manifest["corpus_version"])
    if exists(fs, path):
        raise FileExistsError(f"{path} already committed (another build running?)")
    atomic_write_json(fs, path, manifest)
    return path


def shard_paths(manifest: dict) -> list[str]:
    """Relative shard paths listed by a manifest (in data set, block order).

    Shards hold both splits; filter rows on the ``split`` column.
    """
    return [s["path"] for d in manifest["datasets"] for s in d["shards"]]
