"""Model checkpoints: a self-describing folder, and an importer for the official weights.

A checkpoint folder holds::

    model.pt            {"format", "version", "config", "state_dict", "n_genes", "genes",
                         "genes_sha256", "metadata"}: everything needed to rebuild the model
    model_config.json   the same config, for humans and tooling
    genes.txt           the gene vocabulary, one name per line, in index order

``model.pt`` holds only tensors and plain Python types, so it is read with
``torch.load(weights_only=True)``: no pickled code ever runs on load. A checkpoint from another
format version, or trained on another gene vocabulary, is refused with a clear error.

The official scFoundation file (``models.ckpt``, keys ``gene`` / ``cell`` / ``rde``) maps onto the
``100m`` preset by a key rename plus shape checks (:func:`convert_official_state_dict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scfm.model.config import N_GENES, ModelConfig
from scfm.model.xtrimogene import XTrimoGene

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "scfm.xtrimogene"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "model_config.json"
GENES_FILE = "genes.txt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used with this code or this data."""


class CheckpointVersionError(CheckpointError):
    """The checkpoint was written in another format version."""


class GeneVocabularyMismatchError(CheckpointError):
    """The checkpoint was trained on a different gene list."""


def gene_checksum(genes: Sequence[str]) -> str:
    """sha256 of the ordered gene names (same recipe as ``scfm.genes.GeneVocab.checksum``)."""
    return hashlib.sha256("\n".join(genes).encode()).hexdigest()


def _default_genes() -> list[str]:
    # imported lazily: the model package must not need the gene tables to be importable
    from scfm.genes import GeneVocab

    return list(GeneVocab.load().names)


# ----------------------------------------------------------------------------------------- save
def save_checkpoint(
    path: str | Path,
    model: XTrimoGene,
    genes: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder.

    Parameters
    ----------
    path
        Folder to create (or overwrite the files of).
    model
        The model; a ``torch.compile`` / DDP wrapper is unwrapped.
    genes
        The vocabulary the model was trained on, in index order; default: the scfm vocabulary.
    metadata
        Extra plain-type information (step, corpus version, …) stored alongside.

    Returns
    -------
    Path
        The folder.
    """
    model = _unwrap(model)
    genes = list(genes) if genes is not None else _default_genes()
    if len(genes) != N_GENES:
        raise CheckpointError(f"expected {N_GENES} genes, got {len(genes)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "n_genes": N_GENES,
        "genes": genes,
        "genes_sha256": gene_checksum(genes),
        "metadata": dict(metadata or {}),
    }
    # write then rename, so a crash never leaves a truncated model.pt behind
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(payload["config"], indent=2) + "\n")
    (folder / GENES_FILE).write_text("\n".join(genes) + "\n")
    return folder


# ----------------------------------------------------------------------------------------- load
def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The validated ``model.pt`` payload of a checkpoint folder (or of the file itself)."""
    file = Path(path)
    if file.is_dir():
        file = file / WEIGHTS_FILE
    payload = torch.load(file, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file} is not an scfm model checkpoint")
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointVersionError(
            f"{file} has checkpoint format version {version}, this scfm reads version "
            f"{CHECKPOINT_VERSION}; load it with the scfm release that wrote it and re-save"
        )
    if payload.get("n_genes") != N_GENES:
        raise GeneVocabularyMismatchError(
            f"{file} was trained on {payload.get('n_genes')} genes, this scfm uses {N_GENES}"
        )
    return payload


def check_genes(payload: Mapping[str, Any], genes: Sequence[str]) -> None:
    """Raise :class:`GeneVocabularyMismatchError` unless ``genes`` are the checkpoint's genes."""
    if gene_checksum(list(genes)) == payload["genes_sha256"]:
        return
    stored = payload.get("genes") or []
    first = next(
        (i for i, (a, b) in enumerate(zip(stored, genes, strict=False)) if a != b),
        min(len(stored), len(genes)),
    )
    detail = ""
    if first < min(len(stored), len(genes)):
        detail = f"; first difference at index {first}: {stored[first]!r} vs {genes[first]!r}"
    raise GeneVocabularyMismatchError(
        f"gene vocabulary differs from the checkpoint's ({len(genes)} vs {len(stored)} genes"
        f"{detail}); the model's gene embeddings would be misaligned"
    )


def load_checkpoint(
    path: str | Path,
    genes: Sequence[str] | None = None,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> tuple[XTrimoGene, dict[str, Any]]:
    """Rebuild a model from a checkpoint folder.

    Parameters
    ----------
    path
        Folder written by :func:`save_checkpoint` (or its ``model.pt``).
    genes
        The vocabulary the caller will feed, in index order; default: the scfm vocabulary.
        A mismatch raises :class:`GeneVocabularyMismatchError`.
    map_location
        Where tensors are loaded.
    **overrides
        Config fields to change that do not alter the weights' layout, e.g.
        ``grad_checkpoint=True`` or ``dec_attention="sdpa"`` (drops the FAVOR+ projections).

    Returns
    -------
    model : XTrimoGene
        In eval mode.
    info : dict
        ``config``, ``metadata``, ``genes`` and ``genes_sha256`` of the checkpoint.
    """
    payload = read_checkpoint(path, map_location)
    check_genes(payload, list(genes) if genes is not None else _default_genes())
    cfg = ModelConfig.from_dict({**payload["config"], **overrides})
    model = XTrimoGene(cfg)
    _load_state(model, payload["state_dict"], source=str(path))
    model.to(map_location).eval()
    info = {k: payload[k] for k in ("config", "metadata", "genes", "genes_sha256")}
    return model, info


def _unwrap(model: torch.nn.Module) -> XTrimoGene:
    while not isinstance(model, XTrimoGene):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            raise TypeError(f"expected an XTrimoGene, got {type(model).__name__}")
        model = inner
    return model


def _load_state(model: XTrimoGene, state: Mapping[str, Tensor], source: str) -> None:
    expected = model.state_dict()
    state = dict(state)
    if model.cfg.dec_attention == "sdpa":
        # exact attention has no random features; a Performer checkpoint's are simply unused
        state = {k: v for k, v in state.items() if not k.endswith("attend.projection_matrix")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"weights in {source} do not fit {model.cfg.name!r} model: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}, "
            f"shape mismatches {bad_shape[:5]}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


# ------------------------------------------------------------------------ official checkpoint
# official key prefix (after stripping the Lightning "model." prefix) <-> scfm key prefix, first
# match wins; every other key (token_emb.*, pos_emb, encoder.norm, decoder_embed, decoder.norm,
# norm, to_final) has the same name in both. See docs/model.md.
KEY_MAP = (
    ("encoder.transformer_encoder.{i}.", "encoder.layers.{i}."),
    ("decoder.performer.net.layers.{i}.0.norm.", "decoder.layers.{i}.attn_norm."),
    ("decoder.performer.net.layers.{i}.0.fn.fast_attention.", "decoder.layers.{i}.attn.attend."),
    ("decoder.performer.net.layers.{i}.0.fn.", "decoder.layers.{i}.attn."),
    ("decoder.performer.net.layers.{i}.1.norm.", "decoder.layers.{i}.ff_norm."),
    ("decoder.performer.net.layers.{i}.1.fn.fn.", "decoder.layers.{i}.ff."),
)


def _rule(src: str, dst: str) -> tuple[str, str]:
    return "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)"), dst.replace("{i}", r"\1")


_OFFICIAL_TO_SCFM = [_rule(official, ours) for official, ours in KEY_MAP]
_SCFM_TO_OFFICIAL = [_rule(ours, official) for official, ours in KEY_MAP]

# the redraw counter is training bookkeeping; scfm redraws explicitly (redraw_projections)
OFFICIAL_DROPPED_KEYS = frozenset({"decoder.performer.calls_since_last_redraw"})


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def official_key_to_scfm(key: str) -> str:
    """Map one official state-dict key (with or without the ``model.`` prefix) to scfm's."""
    return _rename(key.removeprefix("model."), _OFFICIAL_TO_SCFM)


def scfm_key_to_official(key: str) -> str:
    """Inverse of :func:`official_key_to_scfm` (without the ``model.`` prefix)."""
    return _rename(key, _SCFM_TO_OFFICIAL)


def convert_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official scFoundation state dict to scfm keys (drops the redraw counter)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        stripped = key.removeprefix("model.")
        if stripped in OFFICIAL_DROPPED_KEYS:
            continue
        out[official_key_to_scfm(stripped)] = value
    return out


def export_official_state_dict(model: XTrimoGene) -> dict[str, Tensor]:
    """scfm weights under the official key names (no ``model.`` prefix), for comparisons."""
    model = _unwrap(model)
    out = {scfm_key_to_official(k): v for k, v in model.state_dict().items()}
    out["decoder.performer.calls_since_last_redraw"] = torch.tensor(0)
    return out


def load_official_checkpoint(
    path: str | Path,
    variant: str = "cell",
    cfg: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> XTrimoGene:
    """Build a model from the official ``models.ckpt`` (``gene`` / ``cell`` / ``rde`` entries).

    Untested against the real file (not available here): the layout follows
    ``../shared/data/scfoundation/OFFICIAL_CHECKPOINT.md``. Every key and shape is checked, so
    a surprise fails loudly instead of loading garbage. The gene order is the official
    ``OS_scRNA_gene_index.19264.tsv``, which is the scfm vocabulary.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if variant not in ckpt:
        raise CheckpointError(f"{path} has no {variant!r} entry (found {sorted(ckpt)})")
    model = XTrimoGene(cfg or ModelConfig.from_name("100m"))
    _load_state(model, convert_official_state_dict(ckpt[variant]["state_dict"]), str(path))
    return model.to(map_location).eval()
