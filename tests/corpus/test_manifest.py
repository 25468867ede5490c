"""The typed manifest: what a build writes, format versions, the checksum pretraining records."""

from __future__ import annotations

import json

import pytest

from scfm.corpus.manifest import (
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    list_versions,
    load_manifest,
    manifest_path,
)
from scfm.corpus.shards import resolve


def _raw(corpus: str) -> dict:
    fs, root = resolve(corpus)
    return json.loads(open(manifest_path(root, list_versions(fs, root)[-1])).read())


def test_a_build_writes_every_documented_field(kang_corpus) -> None:
    raw = _raw(kang_corpus)
    documented = {
        "format", "format_version", "corpus_version", "parent_version", "kind", "created",
        "code_version", "code_revision", "vocab_checksum", "n_vocab_genes", "schema", "config",
        "fingerprint", "mlflow_run_id", "sources", "datasets", "quarantined", "changes", "totals",
        "qc_hist_edges", "failed",
    }  # fmt: skip
    assert set(raw) == documented
    assert raw["format_version"] == FORMAT_VERSION and len(raw["fingerprint"]) == 16
    assert raw["mlflow_run_id"] == ""  # built without MLflow
    d = raw["datasets"][0]
    assert {"source", "dataset_id", "version", "fingerprint", "shards", "dropped"} <= set(d)
    fs, root = resolve(kang_corpus)
    man = load_manifest(fs, root)
    assert isinstance(man, Manifest) and man.to_dict() == raw  # read and written in one place
    assert man.checksum == Manifest.from_dict(raw).checksum and len(man.checksum) == 64


def test_format_versions_are_checked_on_load(kang_corpus) -> None:
    raw = _raw(kang_corpus)
    v1 = {
        k: v for k, v in raw.items() if k not in ("fingerprint", "code_revision", "mlflow_run_id")
    }
    old = Manifest.from_dict(v1 | {"format_version": 1})  # written by the previous scfm
    assert old.fingerprint == "" and old.shard_paths() == Manifest.from_dict(raw).shard_paths()
    with pytest.raises(ManifestError, match="format_version 3.*newer scfm"):
        Manifest.from_dict(raw | {"format_version": 3})
    with pytest.raises(ManifestError, match="not an scfm-corpus manifest"):
        Manifest.from_dict(raw | {"format": "something-else"})
