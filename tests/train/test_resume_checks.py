"""``--resume`` checks what it resumes (issue 16 item 9): no Ray needed, real corpora and files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from scfm import datasets
from scfm.corpus.build import BuildConfig, build_corpus
from scfm.corpus.loader import open_corpus
from scfm.corpus.qc import QCConfig
from scfm.corpus.sources import H5ADSource
from scfm.data.io import read_counts
from scfm.model.checkpoint import WEIGHTS_FILE, save_checkpoint
from scfm.model.xtrimogene import XTrimoGene
from scfm.train.config import PretrainConfig
from scfm.train.loop import CheckpointPayload, TrainState
from scfm.train.pretrain import corpus_info, latest_checkpoint, run_pretraining
from scfm.train.ray_train import _write_checkpoint
from scfm.train.resume import COMPLETE_FILE, TRAIN_STATE_FILE, ResumeError, check_resume


@pytest.fixture(scope="module")
def kang():
    return read_counts(datasets.fetch("kang2018"))


def _build(out: Path, paths: list[str], **kw):
    cfg = BuildConfig(
        output=str(out), sources=[H5ADSource(paths=paths)], qc=QCConfig(min_genes=50),
        block_cells=300, mlflow=False, executor="local", progress=False, **kw,
    )  # fmt: skip
    return build_corpus(cfg).manifest


def _cfg(corpus: str, *extra: str) -> PretrainConfig:
    return PretrainConfig.load(
        overrides=["model=tiny", f"data.corpus={corpus}", "data.micro_batch_size=4",
                   "train.global_batch_size=8", "scale.num_workers=2", *extra]
    )  # fmt: skip


def _checkpoint(folder: Path, cfg: PretrainConfig, step: int) -> Path:
    torch.manual_seed(0)
    model = XTrimoGene(cfg.model_config())
    payload = CheckpointPayload(model.state_dict(), TrainState(step=step, config=cfg.to_dict()))
    folder.mkdir(parents=True)
    _write_checkpoint(str(folder), payload, cfg, corpus_info(open_corpus(cfg.data.corpus)))
    return folder


@pytest.fixture
def corpus_v1(tmp_path, kang) -> tuple[str, str]:
    d = tmp_path / "in"
    d.mkdir()
    kang[:600].write_h5ad(d / "a.h5ad")
    kang[600:900].write_h5ad(d / "b.h5ad")
    _build(tmp_path / "corpus", [str(d / "a.h5ad")])
    return str(tmp_path / "corpus"), str(d / "b.h5ad")


def test_resume_trains_on_the_corpus_version_of_the_checkpoint(tmp_path, corpus_v1):
    corpus, b = corpus_v1
    cfg = _cfg(corpus)
    ckpt = _checkpoint(tmp_path / "ck", cfg, step=6)
    v1_cells = open_corpus(corpus).n_cells
    _build(Path(corpus), [str(Path(b).parent / "a.h5ad"), b], refresh=True)  # v2 committed since
    assert open_corpus(corpus).version == 2 and open_corpus(corpus).n_cells > v1_cells
    pinned = check_resume(cfg, ckpt)
    assert (pinned.version, pinned.n_cells) == (1, v1_cells)


def test_resume_refuses_other_settings_naming_them(tmp_path, corpus_v1):
    corpus, _ = corpus_v1
    ckpt = _checkpoint(tmp_path / "ck", _cfg(corpus), step=6)
    other = _cfg(corpus, "data.micro_batch_size=2", "model_overrides={enc_dim: 64}")
    with pytest.raises(ResumeError) as err:
        check_resume(other, ckpt)
    msg = str(err.value)
    assert "model.enc_dim: checkpoint 32, now 64" in msg
    assert "data.micro_batch_size: checkpoint 4, now 2" in msg and "start a new run" in msg


def test_resume_refuses_another_vocabulary(tmp_path, corpus_v1):
    from scfm.data.genes import GeneVocab

    corpus, _ = corpus_v1
    cfg = _cfg(corpus)
    ckpt = _checkpoint(tmp_path / "ck", cfg, step=6)
    genes = list(GeneVocab.load().names)
    genes[0], genes[1] = genes[1], genes[0]
    save_checkpoint(ckpt, XTrimoGene(cfg.model_config()), genes=genes,
                    metadata=corpus_info(open_corpus(corpus)))  # fmt: skip
    with pytest.raises(ResumeError, match="another gene vocabulary .* misaligned"):
        check_resume(cfg, ckpt)


def test_resume_refuses_a_corpus_that_is_not_the_one_trained_on(tmp_path, corpus_v1, kang):
    corpus, b = corpus_v1
    ckpt = _checkpoint(tmp_path / "ck", _cfg(corpus), step=6)
    other = tmp_path / "other"
    _build(other, [b])  # also a version 1, of other cells
    with pytest.raises(ResumeError, match="version 1 at .* is not the one .* trained on"):
        check_resume(_cfg(str(other)), ckpt)
    a = str(Path(b).parent / "a.h5ad")
    kang[:610].write_h5ad(a + ".new")  # a changed: v2, and v1 retired (keep_versions=1)
    Path(a + ".new").replace(a)
    _build(Path(corpus), [a], refresh=True, keep_versions=1)
    with pytest.raises(ResumeError, match="corpus version 1 .* no longer has .* retired"):
        check_resume(_cfg(corpus), ckpt)


def test_only_complete_checkpoints_are_resumed(tmp_path, corpus_v1):
    corpus, _ = corpus_v1
    cfg = _cfg(corpus)
    run = tmp_path / "run"
    _checkpoint(run / "checkpoint_000001", cfg, step=6)
    late = _checkpoint(run / "checkpoint_000002", cfg, step=12)
    assert latest_checkpoint(run) == str(late)
    marker = (late / COMPLETE_FILE).read_text()
    assert WEIGHTS_FILE in marker and TRAIN_STATE_FILE in marker
    weights = late / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])  # an upload cut short
    assert latest_checkpoint(run) == str(run / "checkpoint_000001")
    with pytest.raises(ResumeError, match="incomplete checkpoint .* pass the run directory"):
        run_pretraining(dataclasses.replace(cfg, name="x"), resume=str(late))
