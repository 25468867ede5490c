from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from functools import partial

import pytest

from scfm import datasets


def test_every_registered_file_resolves_and_verifies():
    for res in datasets.list_resources():
        path = datasets.fetch(res.name, download=False)
        assert path.is_file()
        assert path.as_posix().endswith(res.relpath)
        assert datasets.sha256sum(path) == res.sha256


def test_directory_resource_holds_its_members():
    d = datasets.fetch_dir("tenx_v3_mex")
    assert sorted(p.name for p in d.iterdir()) == [
        "barcodes.tsv.gz",
        "features.tsv.gz",
        "matrix.mtx.gz",
    ]


def test_env_dir_takes_priority(tmp_path, monkeypatch):
    rel = datasets.REGISTRY["vocab"].relpath
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(datasets.fetch("vocab"), tmp_path / rel)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    assert datasets.fetch("vocab") == tmp_path / rel


def test_corrupt_file_is_refused(tmp_path, monkeypatch):
    rel = datasets.REGISTRY["vocab"].relpath
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("gene_name\tindex\nNOTAGENE\t0\n")
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    with pytest.raises(datasets.ChecksumMismatchError, match="registered checksum"):
        datasets.fetch("vocab")


def test_missing_file_error_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setattr(datasets, "REPO_ROOT", tmp_path / "repo" / "main")
    monkeypatch.setattr(datasets, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(datasets.ResourceNotFoundError) as err:
        datasets.fetch("kang2018")
    msg = str(err.value)
    assert "kang2018" in msg and "scrna/kang2018_pbmc_ifnb.h5ad" in msg
    assert str(tmp_path / "env") in msg and str(tmp_path / "cache") in msg
    assert "no public download URL" in msg and datasets.ENV_VAR in msg


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="known resources: .*vocab"):
        datasets.fetch("no-such-thing")


@pytest.fixture
def local_http(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _isolate(monkeypatch, tmp_path, resource):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "REPO_ROOT", tmp_path / "nowhere" / "main")
    monkeypatch.setattr(datasets, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setitem(datasets.REGISTRY, resource.name, resource)


def test_download_fallback_verifies_checksum(tmp_path, monkeypatch, local_http):
    www, base = local_http
    payload = b"gene_name\tindex\nA\t0\n"
    (www / "vocab.tsv").write_bytes(payload)
    res = datasets.Resource(
        "tiny_vocab",
        "genes/tiny.tsv",
        hashlib.sha256(payload).hexdigest(),
        "test",
        f"{base}/vocab.tsv",
    )
    _isolate(monkeypatch, tmp_path, res)
    path = datasets.fetch("tiny_vocab")
    assert path.read_bytes() == payload
    assert path.is_relative_to(tmp_path / "cache")
    # A second fetch finds the cached copy without the server.
    (www / "vocab.tsv").unlink()
    assert datasets.fetch("tiny_vocab") == path


def test_download_with_wrong_checksum_fails(tmp_path, monkeypatch, local_http):
    www, base = local_http
    (www / "v.tsv").write_bytes(b"tampered")
    res = datasets.Resource("bad", "genes/bad.tsv", "0" * 64, "test", f"{base}/v.tsv")
    _isolate(monkeypatch, tmp_path, res)
    with pytest.raises(ValueError, match="(?i)hash"):
        datasets.fetch("bad")
    assert not (tmp_path / "cache" / "genes" / "bad.tsv").exists()
