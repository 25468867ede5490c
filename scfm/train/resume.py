"""What ``--resume`` may resume: complete checkpoints, the same data, compatible settings.

* A checkpoint folder is *complete* when its marker :data:`COMPLETE_FILE` (written last, listing
  every other file with its size) is there and every listed file has that size; a folder cut
  short by a crash or an interrupted upload is skipped by :func:`latest_checkpoint`.
* :func:`check_resume` runs on the driver before anything starts. It refuses, naming the field
  and the fix: another gene vocabulary (checkpoint vs this scfm vs the corpus), a model config
  or data-order setting that differs from the checkpoint's (the weights or the data position
  would not fit), and a corpus version that is gone or is not the one trained on (manifest
  checksum). It returns the corpus *at the version the checkpoint recorded*, so a refresh
  committed since then does not change what a resumed run reads.

Checkpoint locations are local paths or object-store URIs (``s3://…``), read through
:mod:`scfm.storage` (pyarrow filesystems).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from scfm.storage import absolute_uri, is_uri, join_uri, list_files, redact_uri, resolve
from scfm.storage import exists as _exists
from scfm.train.config import PretrainConfig

logger = logging.getLogger(__name__)

COMPLETE_FILE = "_scfm_checkpoint.json"
TRAIN_STATE_FILE = "train_state.pt"

# Settings a resumed run must share with its checkpoint: the data position (batches consumed
# per rank in the seeded order) and the optimizer state only mean the same thing under them.
RESUME_INVARIANTS: tuple[str, ...] = (
    "data.micro_batch_size",
    "data.shuffle_seed",
    "data.buffer_cells",
    "data.max_train_cells",
    "train.global_batch_size",
    "train.seed",
    "scale.num_workers",
)


class ResumeError(ValueError):
    """A checkpoint that this run cannot continue; the message names the problem and the fix."""


def write_complete_marker(folder: str | Path, step: int) -> None:
    """Write the completion marker of a checkpoint folder: last, after every other file."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE_FILE
    }
    tmp = folder / (COMPLETE_FILE + ".tmp")
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    tmp.replace(folder / COMPLETE_FILE)


def _read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read()


def _load(uri: str) -> Any:
    """``torch.load`` (weights only) of a local file (memory-mapped) or an object-store file."""
    import torch

    if is_uri(uri):
        return torch.load(io.BytesIO(_read_bytes(uri)), map_location="cpu", weights_only=True)
    return torch.load(uri, map_location="cpu", weights_only=True, mmap=True)


def is_complete(folder: str | Path) -> bool:
    """The marker is there and every file it lists exists with its recorded size."""
    folder = str(folder)
    try:
        marker = json.loads(_read_bytes(join_uri(folder, COMPLETE_FILE)))
    except (OSError, ValueError):
        return False
    fs, root = resolve(folder)
    for name, size in marker.get("files", {}).items():
        info = fs.get_file_info(f"{root}/{name}")
        if info.type != pafs.FileType.File or info.size != size:
            return False
    return True


def latest_checkpoint(run_dir: str | Path) -> str:
    """The complete checkpoint with the highest step under a Ray Train run directory.

    ``run_dir`` is a local path or an object-store URI. Folders without a marker come from
    scfm before markers existed; they are used (with a warning) only when no folder has one.
    """
    run_dir = str(run_dir)
    files = list_files(run_dir)
    names = set(files)
    complete, legacy, broken = [], [], []
    for state in files:
        if state.rsplit("/", 1)[-1] != TRAIN_STATE_FILE:
            continue
        folder = state.rsplit("/", 1)[0]
        if join_uri(folder, COMPLETE_FILE) in names:
            (complete if is_complete(folder) else broken).append(folder)
        else:
            legacy.append(folder)
    for folder in broken:
        logger.warning(
            "skipping incomplete checkpoint %s (files missing or cut short)", redact_uri(folder)
        )
    candidates = complete
    if not candidates and legacy:
        logger.warning(
            "no checkpoint under %s has a completion marker: using unmarked", redact_uri(run_dir)
        )
        candidates = legacy
    if not candidates:
        raise FileNotFoundError(
            f"no complete checkpoint ({TRAIN_STATE_FILE}) under {redact_uri(run_dir)}"
        )

    def step(folder: str) -> int:
        return int(_load(join_uri(folder, TRAIN_STATE_FILE))["step"])

    return max(candidates, key=lambda f: (step(f), f))


def resume_checkpoint(resume: str | Path) -> str:
    """The checkpoint folder to continue from: ``resume`` itself or its newest complete one.

    A checkpoint folder given directly must be complete when it has a marker.
    """
    resume = absolute_uri(resume)
    if not _exists(resume):
        raise FileNotFoundError(f"--resume {redact_uri(resume)} does not exist")
    if _exists(join_uri(resume, TRAIN_STATE_FILE)):
        if _exists(join_uri(resume, COMPLETE_FILE)) and not is_complete(resume):
            raise ResumeError(
                f"{redact_uri(resume)} is an incomplete checkpoint (files missing or cut short): "
                "pass the run directory instead, to resume from its newest complete checkpoint"
            )
        return resume
    return latest_checkpoint(resume)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d if d != {} else None


def check_resume(cfg: PretrainConfig, checkpoint: str | Path):
    """Refuse an incompatible checkpoint; return the corpus at the version it trained on."""
    from scfm.corpus.loader import open_corpus
    from scfm.data.genes import GeneVocab
    from scfm.model.checkpoint import WEIGHTS_FILE

    location = str(checkpoint)
    payload = _load(join_uri(location, WEIGHTS_FILE))
    state = _load(join_uri(location, TRAIN_STATE_FILE))
    folder = redact_uri(location)
    meta = payload.get("metadata", {})
    vocab = GeneVocab.load()
    if payload.get("genes_sha256") != vocab.checksum:
        raise ResumeError(
            f"checkpoint {folder} was trained on another gene vocabulary (sha256 "
            f"{str(payload.get('genes_sha256'))[:12]}…, this scfm: {vocab.checksum[:12]}…): its "
            "gene embeddings would be misaligned. Resume with the scfm release that wrote it"
        )
    problems = []
    if payload.get("config") != cfg.model_config().to_dict():
        old, new = payload.get("config", {}), cfg.model_config().to_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        problems += [f"model.{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}" for k in diff]
    saved = state.get("config") or {}
    now = cfg.to_dict()
    for key in RESUME_INVARIANTS:
        if saved and _get(saved, key) != _get(now, key):
            problems.append(f"{key}: checkpoint {_get(saved, key)!r}, now {_get(now, key)!r}")
    if problems:
        raise ResumeError(
            f"cannot resume from {folder}: the settings differ from the checkpoint's "
            f"({'; '.join(problems)}). Resume with the checkpoint's settings (saved in the run's "
            "config/pretrain.yaml in MLflow), or start a new run from these weights"
        )
    version = meta.get("corpus.version")
    if version is None:
        logger.warning("checkpoint %s records no corpus version; using the newest", folder)
        return open_corpus(cfg.data.corpus)
    try:
        corpus = open_corpus(cfg.data.corpus, int(version))
    except FileNotFoundError as exc:
        raise ResumeError(
            f"checkpoint {folder} trained on corpus version {version} of "
            f"{meta.get('corpus.uri', cfg.data.corpus)}, which {cfg.data.corpus} no longer has "
            f"({exc}). Point data.corpus at a copy that has it, or start a new run from these "
            "weights on the current version"
        ) from None
    want = meta.get("corpus.manifest_sha256")
    if want and corpus.manifest.checksum != want:
        raise ResumeError(
            f"corpus version {version} at {cfg.data.corpus} is not the one checkpoint {folder} "
            f"trained on (manifest sha256 {corpus.manifest.checksum[:12]}…, recorded "
            f"{want[:12]}…): is data.corpus another corpus? Point it at the original one"
        )
    if corpus.manifest.vocab_checksum != vocab.checksum:
        raise ResumeError(
            f"corpus {cfg.data.corpus} v{version} was built with another gene vocabulary "
            f"({corpus.manifest.vocab_checksum[:12]}…, this scfm: {vocab.checksum[:12]}…)"
        )
    return corpus
