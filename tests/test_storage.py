"""Local paths and URIs as the driver hands them to Ray workers (``scfm.storage``)."""

from __future__ import annotations

import os

from scfm.storage import absolute_uri, join_uri, resolve


def test_absolute_uri_reads_local_forms_as_resolve_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    here = str(tmp_path / "corpus")
    assert absolute_uri("corpus") == absolute_uri("./corpus/") == here
    assert absolute_uri(tmp_path / "corpus") == here
    assert absolute_uri("~/runs") == os.path.join(str(tmp_path), "home", "runs")
    for local in ("corpus", "~/runs"):
        assert absolute_uri(local) == resolve(local)[1]
    # an explicit file:// (a mount all nodes share) stays one, with its slashes kept on joining
    assert absolute_uri("file://corpus") == f"file://{here}"
    assert absolute_uri(f"file://{here}/") == f"file://{here}"
    assert resolve(absolute_uri(f"file://{here}"))[1] == here
    assert join_uri(absolute_uri(f"file://{here}"), "run-a") == f"file://{here}/run-a"
    assert absolute_uri("s3://bucket/corpus/") == "s3://bucket/corpus"  # left to the workers
