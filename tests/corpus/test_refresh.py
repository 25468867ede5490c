"""Refresh equals a fresh build; a killed build or refresh leaves a consistent corpus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.loader import open_corpus
from scfm.corpus.manifest import list_versions
from scfm.corpus.qc import QCConfig
from scfm.corpus.shards import TMP_MARK
from scfm.corpus.sources import CensusSource, DirectorySource
from scfm.data.io import read_counts
from tests.census_fixture import DEFAULT_DATASETS, FixtureDataset, build_census_fixture

from .conftest import assert_arithmetic, assert_same_corpus, corpus_frame

QC = QCConfig(min_genes=50)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kang():
    return read_counts(datasets.fetch("kang2018"))


def _cfg(out, source, **kw) -> BuildConfig:
    return BuildConfig(
        output=str(out),
        sources=[source],
        qc=QC,
        block_cells=300,
        mlflow=False,
        executor="local",
        progress=False,
        **kw,
    )


def test_file_refresh_after_add_change_remove_equals_fresh_build(tmp_path, kang):
    src_dir = tmp_path / "inputs"
    src_dir.mkdir()
    kang[:600].write_h5ad(src_dir / "a.h5ad")
    kang[600:1200].write_h5ad(src_dir / "b.h5ad")
    (src_dir / "tenx").mkdir()
    (src_dir / "tenx" / "c.h5").write_bytes(datasets.fetch("tenx_v3_h5").read_bytes())
    source = DirectorySource(root=str(src_dir), name="lab")
    out = tmp_path / "corpus"
    v1 = build_corpus(_cfg(out, source)).manifest
    assert {d.dataset_id for d in v1.datasets} == {"a.h5ad", "b.h5ad", "tenx/c.h5"}

    kang[1200:1500].write_h5ad(src_dir / "d.h5ad")  # added
    kang[600:900].write_h5ad(src_dir / "b.h5ad")  # changed (new content, new sha256)
    (src_dir / "tenx" / "c.h5").unlink()  # removed
    refreshed = build_corpus(_cfg(out, source, refresh=True))
    v2 = refreshed.manifest
    assert v2.corpus_version == 2 and v2.parent_version == 1 and v2.kind == "refresh"
    assert v2.changes == {
        "added": ["lab:d.h5ad"],
        "changed": ["lab:b.h5ad"],
        "removed": ["lab:tenx/c.h5"],
        "unchanged": ["lab:a.h5ad"],
    }
    assert refreshed.units_processed == 2  # d (300 cells) and b (300 cells): one block each
    a1 = next(d for d in v1.datasets if d.dataset_id == "a.h5ad")
    a2 = next(d for d in v2.datasets if d.dataset_id == "a.h5ad")
    assert a1 == a2  # reused as is, shards and all
    assert_arithmetic(v2)

    fresh = tmp_path / "fresh"
    build_corpus(_cfg(fresh, source))
    assert_same_corpus(str(out), str(fresh))
    # readers of the previous version still find all of its shards (keep_versions=2)
    old = open_corpus(str(out), version=1)
    assert old.read_table().num_rows == v1.totals["n_cells_kept"]


def test_census_refresh_on_a_new_release_equals_fresh_build(tmp_path, census_store):
    out = tmp_path / "corpus"
    build_corpus(_cfg(out, CensusSource(uri=census_store.uri)))
    specs = {s.name: s for s in DEFAULT_DATASETS}
    new_release = (
        specs["kang2018-control"],
        specs["kang2018-stimulated"],
        FixtureDataset("pbmc68k", "pbmc68k_counts", cells=(0, 500), version="2"),  # changed
        specs["tenx-v3-chr21"],
        # papalexi2021 removed; a new data set added:
        FixtureDataset("papalexi2021-rep", "papalexi2021", cells=(5000, 6000)),
    )
    store2 = build_census_fixture(tmp_path / "census2", new_release, build_date="2025-07-01")
    result = build_corpus(_cfg(out, CensusSource(uri=store2.uri), refresh=True))
    man = result.manifest
    ids = {s.name: s.dataset_id for s in new_release} | {
        "papalexi2021": specs["papalexi2021"].dataset_id
    }
    assert man.changes["added"] == [f"census:{ids['papalexi2021-rep']}"]
    assert man.changes["changed"] == [f"census:{ids['pbmc68k']}"]
    assert man.changes["removed"] == [f"census:{ids['papalexi2021']}"]
    assert len(man.changes["unchanged"]) == 3
    assert result.units_processed == 2 + 4  # pbmc68k v2 (500 cells), papalexi-rep (1,000)
    assert man.sources[0].release["census_build_date"] == "2025-07-01"
    fresh = tmp_path / "fresh"
    build_corpus(_cfg(fresh, CensusSource(uri=store2.uri)))
    assert_same_corpus(str(out), str(fresh))


def _spawn_build(args: list[str], ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "workflows" / "build_corpus.py"),
        *args,
        "--ray-address",
        ray_address,
        "--no-mlflow",
        "--no-progress",
        "--min-genes",
        "50",
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"build ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            )
        if time.time() - t0 > timeout:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started, no cleanup
    proc.wait(timeout=30)


def test_killed_refresh_then_rerun_is_consistent(tmp_path, kang, ray_local):
    """SIGKILL a real `build_corpus.py --refresh` mid-way: readers never see it; re-run heals."""
    src_dir = tmp_path / "inputs"
    src_dir.mkdir()
    kang[:400].write_h5ad(src_dir / "a.h5ad")
    source = DirectorySource(root=str(src_dir), name="dir")
    out = tmp_path / "corpus"
    v1 = build_corpus(_cfg(out, source)).manifest

    # a big addition: 20,729 cells in 70 blocks of 300
    (src_dir / "p.h5ad").write_bytes(datasets.fetch("papalexi2021").read_bytes())
    units_dir = out / "_units"
    proc = _spawn_build(
        ["-o", str(out), "--dir", str(src_dir), "--block-cells", "300", "--refresh"],
        ray_local.get_runtime_context().gcs_address,
    )
    _kill_when(proc, lambda: units_dir.exists() and len(list(units_dir.glob("*.json"))) >= 3)
    finished_blocks = len(list(units_dir.glob("*.json")))
    assert 3 <= finished_blocks < 70

    # what a reader sees: still version 1, complete
    assert list_versions(*_fs(out)) == [1]
    c = open_corpus(str(out))
    assert c.version == 1 and c.read_table().num_rows == v1.totals["n_cells_kept"]

    # re-run (same job, in-process): resumes the finished blocks, commits version 2
    result = build_corpus(_cfg(out, DirectorySource(root=str(src_dir), name="dir"), refresh=True))
    assert result.units_reused >= finished_blocks - 1  # a block killed mid-checkpoint is redone
    assert result.units_processed + result.units_reused == 70
    man = result.manifest
    assert man.corpus_version == 2
    assert_arithmetic(man)
    df = corpus_frame(str(out))
    assert df["cell_id"].is_unique
    assert len(df) == man.totals["n_cells_kept"]
    assert man.totals["n_cells_in"] == 400 + 20729
    # garbage collection removed temporary files and checkpoints of the killed run
    leftovers = [p for p in out.rglob("*") if TMP_MARK in p.name]
    assert leftovers == [] and not list(units_dir.glob("*.json"))
    fresh = tmp_path / "fresh"
    build_corpus(_cfg(fresh, source))
    assert_same_corpus(str(out), str(fresh))


def _fs(path):
    from scfm.corpus.shards import resolve

    return resolve(str(path))
