"""Failure handling of corpus jobs (issue 16): transient vs data verdicts, crashes, commits."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from scfm import datasets
from scfm.corpus.build import EXIT_FAILED, BuildConfig, build_corpus
from scfm.corpus.loader import open_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import CensusSource, H5ADSource, WorkUnit
from scfm.data.io import read_counts

from .conftest import assert_arithmetic, assert_same_corpus, corpus_frame

QC = QCConfig(min_genes=50)


@pytest.fixture(scope="module")
def kang():
    return read_counts(datasets.fetch("kang2018"))


@dataclass
class FlakySource(H5ADSource):
    """An h5ad source whose reads of ``flaky`` data sets fail with a connection error.

    The first ``fail_times`` reads of each block fail (counted in files under ``counter_dir``,
    so the count survives across processes). ``spec()`` is the parent's: same fingerprint as a
    healthy source, as for a real object store that was down for a while.
    """

    flaky: tuple[str, ...] = ()
    fail_times: int = 0
    counter_dir: str = ""

    def read(self, unit: WorkUnit):
        if unit.dataset_id in self.flaky:
            counter = Path(self.counter_dir) / f"{unit.dataset_id}-{unit.block}"
            n = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(n))
            if n <= self.fail_times:
                raise ConnectionError(f"simulated object-store reset (read {n})")
        return super().read(unit)


def _cfg(out, sources, **kw) -> BuildConfig:
    args = dict(
        qc=QC,
        block_cells=300,
        mlflow=False,
        executor="local",
        progress=False,
        retry_backoff_s=0.01,
    )
    return BuildConfig(output=str(out), sources=sources, **(args | kw))


def _inputs(tmp_path, kang) -> tuple[str, str]:
    d = tmp_path / "inputs"
    d.mkdir()
    kang[:600].write_h5ad(d / "a.h5ad")
    kang[600:900].write_h5ad(d / "b.h5ad")
    return str(d / "a.h5ad"), str(d / "b.h5ad")


def _rewrite(path: str, adata) -> None:
    """Replace an input file with new content (rename: the old one may still be open)."""
    adata.write_h5ad(path + ".new")
    os.replace(path + ".new", path)


def test_transient_read_error_is_retried_inside_the_job(tmp_path, kang):
    a, b = _inputs(tmp_path, kang)
    (tmp_path / "n").mkdir()
    flaky = FlakySource(
        paths=[a, b], flaky=("a.h5ad",), fail_times=1, counter_dir=str(tmp_path / "n")
    )
    result = build_corpus(_cfg(tmp_path / "c", [flaky]))
    assert result.exit_code == 0
    assert result.manifest.quarantined == [] and result.manifest.failed == []
    attempts = {(r.unit["dataset_id"], r.unit["block"]): r.attempts for r in result.unit_results}
    assert attempts == {("a.h5ad", 0): 2, ("a.h5ad", 1): 2, ("b.h5ad", 0): 1}
    build_corpus(_cfg(tmp_path / "ref", [H5ADSource(paths=[a, b])]))
    assert_same_corpus(str(tmp_path / "c"), str(tmp_path / "ref"))


def test_persistent_infrastructure_failure_is_not_carried_forward(tmp_path, kang):
    a, b = _inputs(tmp_path, kang)
    (tmp_path / "n").mkdir()
    down = FlakySource(
        paths=[a, b], flaky=("a.h5ad",), fail_times=10**6, counter_dir=str(tmp_path / "n")
    )
    out = tmp_path / "c"
    v1 = build_corpus(_cfg(out, [down], retries=2))
    man = v1.manifest
    assert v1.exit_code == EXIT_FAILED
    assert man.quarantined == []  # not a verdict on the data
    assert [(f.dataset_id, f.stage) for f in man.failed] == [("a.h5ad", "read")]
    assert "ConnectionError: simulated object-store reset (read 3)" in man.failed[0].error
    assert [d.dataset_id for d in man.datasets] == ["b.h5ad"]
    assert man.totals["n_failed"] == 1
    assert_arithmetic(man)

    # The store is back: the next refresh processes the failed data set (no verdict carried).
    healthy = H5ADSource(paths=[a, b])
    v2 = build_corpus(_cfg(out, [healthy], refresh=True))
    assert v2.exit_code == 0 and v2.manifest.failed == []
    assert v2.manifest.changes["added"] == ["h5ad:a.h5ad"]
    assert v2.manifest.changes["unchanged"] == ["h5ad:b.h5ad"]
    assert v2.units_processed == 2  # a's two blocks; b reused
    build_corpus(_cfg(tmp_path / "ref", [healthy]))
    assert_same_corpus(str(out), str(tmp_path / "ref"))

    # A changed data set that fails keeps serving its previous version (same rows as before).
    before = corpus_frame(str(out))
    _rewrite(a, kang[900:1200])
    v3 = build_corpus(_cfg(out, [dataclasses.replace(down, paths=[a, b])], refresh=True))
    assert v3.exit_code == EXIT_FAILED
    assert v3.manifest.changes["changed"] == ["h5ad:a.h5ad"]
    assert [f.dataset_id for f in v3.manifest.failed] == ["a.h5ad"]
    rec = {d.dataset_id: d for d in v3.manifest.datasets}["a.h5ad"]
    assert rec == {d.dataset_id: d for d in v2.manifest.datasets}["a.h5ad"]
    after = corpus_frame(str(out))
    assert after["cell_id"].tolist() == before["cell_id"].tolist()
    v4 = build_corpus(_cfg(out, [healthy], refresh=True))
    assert v4.manifest.failed == [] and v4.manifest.changes["changed"] == ["h5ad:a.h5ad"]
    assert open_corpus(str(out)).manifest.totals["n_cells_in"] == 600


def test_store_changed_error_is_transient(census_store):
    from scfm.corpus.sources import StoreChangedError

    src = CensusSource(uri=census_store.uri)
    assert src.is_transient(StoreChangedError("x"), "read")
    assert src.is_transient(OSError("s3 timeout"), "read")
    assert src.is_transient(MemoryError(), "harmonize")
    assert not src.is_transient(ValueError("negative values"), "validate")
    files = H5ADSource(paths=[])
    assert files.is_transient(OSError("disk full"), "write")
    assert not files.is_transient(OSError("corrupt HDF5 chunk"), "read")


class _Directory(http.server.BaseHTTPRequestHandler):
    """A Census release directory on 127.0.0.1; ``stable`` moves after the first lookup."""

    files: dict[str, list[dict]] = {}
    served: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        name = self.path.strip("/")
        self.served.append(name)
        versions = self.files[name]
        body = json.dumps(versions[0] if len(versions) == 1 else versions.pop(0)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_census_alias_resolved_once_on_the_driver(tmp_path, census_store, ray_local, monkeypatch):
    """``census_version="stable"``: the driver resolves it; workers read that release's store.

    The directory is served over HTTP to the driver only (Ray workers cannot reach it), and
    ``stable`` points at another release after the first lookup: every block must still come
    from the release resolved at planning.
    """
    import cellxgene_census._release_directory as rd

    from tests.census_fixture import DEFAULT_DATASETS

    def release(date: str, uri: str) -> dict:
        return {"release_build": date, "release_date": date, "soma": {"uri": uri}, "h5ads": {}}

    store = census_store.uri
    first = {"stable": "2099-01-01", "2099-01-01": release("2099-01-01", store)}
    moved = {"stable": "2099-02-01", "2099-02-01": release("2099-02-01", str(tmp_path / "gone"))}
    mirrors = {"default": "m", "m": {"provider": "S3", "base_uri": "", "region": "us-west-2"}}
    _Directory.files = {"release.json": [first, moved], "mirrors.json": [mirrors]}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Directory)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(rd, "CELL_CENSUS_RELEASE_DIRECTORY_URL", f"{base}/release.json")
    monkeypatch.setattr(rd, "CELL_CENSUS_MIRRORS_DIRECTORY_URL", f"{base}/mirrors.json")
    tenx = next(d for d in DEFAULT_DATASETS if d.name == "tenx-v3-chr21").dataset_id
    flt = f"dataset_id == '{tenx}'"
    try:
        src = CensusSource(census_version="stable", obs_value_filter=flt)
        cfg = dataclasses.replace(
            _cfg(tmp_path / "c", [src], block_cells=200), executor="ray", retries=0
        )
        result = build_corpus(cfg)
    finally:
        server.shutdown()
    man = result.manifest
    assert man.quarantined == [] and man.failed == []
    (rec,) = man.sources
    assert rec.release["census_version"] == "2099-01-01"
    assert rec.config["census_version"] == "stable" and rec.config["uri"] is None
    ref = build_corpus(_cfg(tmp_path / "ref", [CensusSource(uri=store, obs_value_filter=flt)]))
    assert man.totals["n_cells_in"] == ref.manifest.totals["n_cells_in"] > 200
    assert corpus_frame(str(tmp_path / "c"))["cell_id"].tolist() == (
        corpus_frame(str(tmp_path / "ref"))["cell_id"].tolist()
    )


# ------------------------------------------------------------------ item 3: commit what exists


@dataclass
class HookSource(H5ADSource):
    """An h5ad source with test-only hooks run when block ``at_block`` of a data set is read.

    ``action``: ``"delete_first_shard"`` removes block 0's shard of the same data set (a shard
    lost after it was written); ``"interrupt"`` raises KeyboardInterrupt (the job dies there).
    """

    action: str = ""
    at_block: int = 1
    output: str = ""

    def read(self, unit: WorkUnit):
        if unit.block == self.at_block and self.action == "interrupt":
            raise KeyboardInterrupt("test: job killed")
        if unit.block == self.at_block and self.action == "delete_first_shard":
            (shard,) = Path(self.output, "shards").rglob("*-b00000-00.parquet")
            shard.unlink()
        return super().read(unit)


def test_a_lost_shard_fails_the_commit_and_nothing_is_committed(tmp_path, kang):
    from scfm.corpus.manifest import list_versions
    from scfm.corpus.shards import ShardCheckError, resolve

    a, _ = _inputs(tmp_path, kang)
    out = tmp_path / "c"
    src = HookSource(paths=[a], action="delete_first_shard", at_block=1, output=str(out))
    with pytest.raises(ShardCheckError, match=r"1 of 2 shards .*-b00000-00\.parquet: missing"):
        build_corpus(_cfg(out, [src]))
    assert list_versions(*resolve(str(out))) == []  # readers still see nothing


def test_resume_rewrites_a_truncated_shard(tmp_path, kang):
    a, _ = _inputs(tmp_path, kang)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_corpus(_cfg(out, [HookSource(paths=[a], action="interrupt", at_block=1)]))
    (shard,) = (out / "shards").rglob("*-b00000-00.parquet")
    shard.write_bytes(shard.read_bytes()[:-100])  # a torn write left under the final name
    again = build_corpus(_cfg(out, [H5ADSource(paths=[a])]))
    assert again.units_reused == 0 and again.units_processed == 2
    build_corpus(_cfg(tmp_path / "ref", [H5ADSource(paths=[a])]))
    assert_same_corpus(str(out), str(tmp_path / "ref"))


def test_relative_output_is_resolved_on_the_driver(tmp_path, kang, ray_local, monkeypatch):
    """Ray workers run in their own working directory; a relative -o must not follow it."""
    a, _ = _inputs(tmp_path, kang)
    monkeypatch.chdir(tmp_path)
    result = build_corpus(_cfg("rel/corpus", [H5ADSource(paths=[a])], executor="ray"))
    assert result.manifest.totals["n_shards"] == 2
    df = corpus_frame(str(tmp_path / "rel" / "corpus"))
    assert len(df) == result.manifest.totals["n_cells_kept"] > 0


def test_local_output_is_refused_on_a_multi_node_cluster():
    from scfm.corpus.build import check_output_reachable
    from scfm.storage import absolute_uri

    check_output_reachable("corpus", 1)
    check_output_reachable("s3://bucket/corpus", 3)
    check_output_reachable("file:///mnt/shared/corpus", 3)
    check_output_reachable(absolute_uri("file:///mnt/shared/corpus"), 3)  # as the build passes it
    with pytest.raises(ValueError, match="local path, but the Ray cluster has 3 nodes.*s3://"):
        check_output_reachable("corpus", 3)


# ------------------------------------------------------------ item 2: crashes must not hang


@dataclass
class CrashSource(H5ADSource):
    """Test-only hook: reading any block of a data set in ``crash`` SIGKILLs the worker process."""

    crash: tuple[str, ...] = ()

    def read(self, unit: WorkUnit):
        if unit.dataset_id in self.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().read(unit)


@pytest.mark.slow
def test_a_worker_that_keeps_crashing_is_quarantined_in_bounded_time(tmp_path, kang, ray_local):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers: no tests/
    a, b = _inputs(tmp_path, kang)
    src = CrashSource(paths=[a, b], crash=("b.h5ad",))
    t0 = time.monotonic()
    result = build_corpus(_cfg(tmp_path / "c", [src], executor="ray", crash_retries=1))
    assert time.monotonic() - t0 < 120  # Ray Data's default retries would never end
    man = result.manifest
    (q,) = man.quarantined
    assert (q.dataset_id, q.stage) == ("b.h5ad", "crash")
    assert q.error.startswith("worker crashed (exit: the worker process died on each of 2 ")
    assert [d.dataset_id for d in man.datasets] == ["a.h5ad"]
    assert_arithmetic(man)
    build_corpus(_cfg(tmp_path / "ref", [H5ADSource(paths=[a])]))
    assert corpus_frame(str(tmp_path / "c"))["cell_id"].tolist() == (
        corpus_frame(str(tmp_path / "ref"))["cell_id"].tolist()
    )


# ------------------------------------------------- item 4: one writer; GC keeps what it keeps

_HOLD = """
import sys, time
from scfm.corpus.lease import Lease
from scfm.corpus.shards import resolve
Lease(*resolve(sys.argv[1]), ttl_s=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_writer_stops_naming_the_holder(tmp_path, kang, caplog):
    import subprocess

    from typer.testing import CliRunner

    from scfm.corpus.cli import corpus_app
    from scfm.corpus.lease import EXIT_LOCKED, LeaseHeldError
    from scfm.corpus.manifest import list_versions
    from scfm.corpus.shards import resolve

    a, _ = _inputs(tmp_path, kang)
    out = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out), "1.5"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        inflight = out / "shards" / f"x.parquet.tmp-{'0' * 12}"  # the holder's file in flight
        inflight.parent.mkdir(parents=True)
        inflight.write_bytes(b"partial")
        time.sleep(2.5)  # past the first expiry: only the holder's refreshes keep it live
        with pytest.raises(LeaseHeldError, match=rf"being written by .* pid {holder.pid} "):
            build_corpus(_cfg(out, [H5ADSource(paths=[a])]))
        res = CliRunner().invoke(
            corpus_app, ["build", "-o", str(out), "--h5ad", a, "--executor", "local",
                         "--no-mlflow", "--no-progress"],
        )  # fmt: skip
        assert res.exit_code == EXIT_LOCKED, res.output
        assert f"pid {holder.pid}" in res.output
        assert list_versions(*resolve(str(out))) == [] and inflight.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lease is stale (process gone) and the next build breaks it
    with caplog.at_level("WARNING", logger="scfm.corpus.lease"):
        result = build_corpus(_cfg(out, [H5ADSource(paths=[a])]))
    assert result.manifest.corpus_version == 1
    assert any("breaking the stale lease" in r.message and "process is gone" in r.message
               for r in caplog.records)  # fmt: skip
    assert not (out / "_lease.json").exists()  # given back after the build


def test_an_expired_lease_of_another_host_is_broken(tmp_path, kang, caplog):
    a, _ = _inputs(tmp_path, kang)
    out = tmp_path / "c"
    out.mkdir()
    stale = {"owner": "x", "host": "node-7", "pid": 1, "expires": time.time() - 30}
    (out / "_lease.json").write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="scfm.corpus.lease"):
        assert build_corpus(_cfg(out, [H5ADSource(paths=[a])])).manifest.corpus_version == 1
    assert any("host node-7 pid 1" in r.message and "expired 3" in r.message
               for r in caplog.records)  # fmt: skip


def test_gc_retires_old_manifests_with_their_shards(tmp_path, kang):
    from scfm.corpus.manifest import list_versions
    from scfm.corpus.shards import resolve

    a, b = _inputs(tmp_path, kang)
    out = tmp_path / "c"
    build_corpus(_cfg(out, [H5ADSource(paths=[a])]))
    _rewrite(a, kang[900:1200])  # v2: a changed, so v1's shards are v1's alone
    build_corpus(_cfg(out, [H5ADSource(paths=[a])], refresh=True))
    build_corpus(_cfg(out, [H5ADSource(paths=[a, b])], refresh=True))  # v3: b added
    assert list_versions(*resolve(str(out))) == [2, 3]
    with pytest.raises(FileNotFoundError, match="version 1 was retired by garbage collection"):
        open_corpus(str(out), version=1)
    for v in (2, 3):
        c = open_corpus(str(out), version=v)
        assert c.read_table().num_rows == c.manifest.totals["n_cells_kept"] > 0
    on_disk = {p.relative_to(out).as_posix() for p in (out / "shards").rglob("*.parquet")}
    assert on_disk == set(open_corpus(str(out), 2).manifest.shard_paths()) | set(
        open_corpus(str(out), 3).manifest.shard_paths()
    )


# ------------------------------------------------------------ item 6: validation blind spots


def _variant(tmp_path, kang, name: str, change) -> str:
    import numpy as np
    import scipy.sparse as sp

    sub = kang[:300].copy()
    sub.X = sp.csr_matrix(sub.X, dtype=np.float32)
    change(sub, np.random.default_rng(0))
    path = tmp_path / name / "x.h5ad"
    path.parent.mkdir()
    sub.write_h5ad(path)
    return str(path)


def _rounded_cpm(a, rng):
    import numpy as np
    import scipy.sparse as sp

    totals = np.asarray(a.X.sum(axis=1)).ravel()
    a.X = sp.csr_matrix(np.rint(sp.diags(1e6 / totals) @ a.X), dtype=np.float32)


def _ambient_corrected(a, rng):  # SoupX adjustCounts(roundToInt=FALSE)-like: fractional removal
    import numpy as np

    a.X.data = np.maximum(a.X.data - rng.uniform(0.0, 0.6, a.X.nnz), 0).astype(np.float32)


def _duplicated_gene(a, rng):
    names = a.var_names.to_list()
    names[1] = names[0]
    a.var_names = names


def _lowercase(a, rng):
    a.var_names = [g.lower() for g in a.var_names]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_rounded_cpm, r"sums to about 99\d,\d{3} .* CPM/TPM values rounded to integers"),
        (_ambient_corrected, r"ambient-RNA-corrected counts \(SoupX, CellBender.*round them"),
        (_duplicated_gene, r"1 duplicated gene names .*make them unique"),
    ],
    ids=["rounded-cpm", "ambient-corrected", "duplicated-genes"],
)
def test_corpus_and_validate_anndata_refuse_the_same_inputs(tmp_path, kang, change, message):
    import anndata as ad

    from scfm.data.validate import InputValidationError, validate_anndata

    path = _variant(tmp_path, kang, "v", change)
    with pytest.raises(InputValidationError, match=message):
        validate_anndata(ad.read_h5ad(path))
    man = build_corpus(_cfg(tmp_path / "c", [H5ADSource(paths=[path])])).manifest
    (q,) = man.quarantined
    assert q.stage == "validate" and re.search(message, q.error), q.error
    assert man.datasets == []


def test_lowercase_human_symbols_are_not_taken_for_mouse(tmp_path, kang):
    import anndata as ad
    import numpy as np

    from scfm.data.validate import validate_anndata

    lower = _variant(tmp_path, kang, "lower", _lowercase)
    upper = _variant(tmp_path, kang, "upper", lambda a, rng: None)
    assert validate_anndata(ad.read_h5ad(lower)).report.fraction_genes_mapped > 0.5
    man = build_corpus(_cfg(tmp_path / "cl", [H5ADSource(paths=[lower])])).manifest
    assert man.quarantined == [] and man.totals["n_cells_kept"] > 0
    build_corpus(_cfg(tmp_path / "cu", [H5ADSource(paths=[upper])]))
    a, b = corpus_frame(str(tmp_path / "cl")), corpus_frame(str(tmp_path / "cu"))
    assert a["cell_id"].tolist() == b["cell_id"].tolist()
    assert all(np.array_equal(x, y) for x, y in zip(a["gene_idx"], b["gene_idx"], strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a["counts"], b["counts"], strict=True))
