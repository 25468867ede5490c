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

from scfm.model.config import N_GENES, N_POS, ModelConfig
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
    """sha256 of the ordered gene names (same recipe as ``scfm.data.genes.GeneVocab.checksum``)."""
    return hashlib.sha256("\n".join(genes).encode()).hexdigest()


def _default_genes() -> list[str]:
    # imported lazily: the model package must not need the gene tables to be importable
    from scfm.data.genes import GeneVocab

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


OFFICIAL_VARIANTS = ("cell", "rde", "gene")


class OfficialCheckpointError(CheckpointError):
    """An official scFoundation file whose layout, config or weights scfm cannot map."""


def flatten_official_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat hyper-parameter dict the official ``convertconfig`` builds from a variant's config.

    ``config["model_config"][config["model"]]`` first, then ``config["dataset_config"]["rnaseq"]``
    (dataset values overwrite model values of the same key), plus ``model_type``.
    """
    model_type = config.get("model")
    model_cfg = dict((config.get("model_config") or {}).get(model_type) or {})
    data_cfg = dict((config.get("dataset_config") or {}).get("rnaseq") or {})
    flat = {**model_cfg}
    flat.update(data_cfg)
    flat["model_type"] = model_type
    return flat


def official_model_config(config: Mapping[str, Any], name: str = "100m") -> ModelConfig:
    """A :class:`ModelConfig` from the config stored with an official variant.

    Sizes not stored in the file are the official code defaults: encoder FFN 4 × width (ReLU,
    post-norm), decoder FFN 4 × width, FAVOR+ features ⌊d_head · ln d_head⌋, encoder dropout 0.1.

    Raises
    ------
    OfficialCheckpointError
        Another model type or module type, or a sequence length other than 19,266 (another
        gene vocabulary): the weights would not mean what scfm assumes.
    """
    flat = flatten_official_config(config)
    if flat["model_type"] != "mae_autobin":
        raise OfficialCheckpointError(
            f"official model type {flat['model_type']!r} is not supported: scfm imports the "
            "'mae_autobin' (xTrimoGene) checkpoints of scFoundation only"
        )
    seq_len = flat.get("seq_len", N_POS)
    if seq_len != N_POS:
        raise OfficialCheckpointError(
            f"official config has seq_len {seq_len}, scfm's layout is {N_POS} (19,264 genes + T + "
            "S): this checkpoint uses another gene vocabulary and cannot be imported"
        )
    enc, dec = flat.get("encoder") or {}, flat.get("decoder") or {}
    for part, want in ((enc, "transformer"), (dec, "performer")):
        got = part.get("module_type", want)
        if got != want:
            raise OfficialCheckpointError(
                f"official module_type {got!r} where scfm expects {want!r}; only the released "
                "transformer-encoder / performer-decoder layout is supported"
            )
    try:
        fields = dict(
            n_bins=int(flat.get("bin_num", 100)),
            bin_alpha=float(flat.get("bin_alpha", 1.0)),
            enc_dim=int(enc["hidden_dim"]),
            enc_depth=int(enc["depth"]),
            enc_heads=int(enc["heads"]),
            dec_dim=int(dec["hidden_dim"]),
            dec_depth=int(dec["depth"]),
            dec_heads=int(dec["heads"]),
            dec_dim_head=int(dec["dim_head"]),
        )
    except KeyError as exc:
        raise OfficialCheckpointError(
            f"official config lacks encoder/decoder field {exc}; found encoder {sorted(enc)}, "
            f"decoder {sorted(dec)}"
        ) from None
    fields["enc_ffn_dim"] = 4 * fields["enc_dim"]
    fields["dec_ffn_dim"] = 4 * fields["dec_dim"]
    preset = ModelConfig.from_name("100m")
    cfg = ModelConfig(name=name, dropout=preset.dropout, **fields)
    return cfg


def _official_name(scfm_key: str) -> str:
    return scfm_key_to_official(scfm_key)


def check_official_state(model: XTrimoGene, state: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`OfficialCheckpointError` unless ``state`` (official names) fits ``model``.

    The message names keys in the official spelling: every official key must map onto an scfm
    key of the same shape, and every scfm weight must be present.
    """
    expected = model.state_dict()
    renamed: dict[str, str] = {}  # scfm key -> official key
    unexpected: list[str] = []
    for key in state:
        stripped = key.removeprefix("model.")
        if stripped in OFFICIAL_DROPPED_KEYS:
            continue
        ours = official_key_to_scfm(stripped)
        if ours in expected:
            renamed[ours] = stripped
        else:
            unexpected.append(stripped)
    missing = [_official_name(k) for k in expected if k not in renamed]
    bad_shape = [
        f"{official}: file {list(state_shape)} vs model {list(expected[ours].shape)}"
        for ours, official in renamed.items()
        if (state_shape := _shape(state, official)) != tuple(expected[ours].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_few(missing)}")
        if unexpected:
            parts.append(f"in the file but not in the model: {_few(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatches: {_few(bad_shape)}")
        raise OfficialCheckpointError(
            f"official weights in {source} do not fit the {model.cfg.name!r} model "
            f"(enc {model.cfg.enc_dim}x{model.cfg.enc_depth}, dec {model.cfg.dec_dim}x"
            f"{model.cfg.dec_depth}): "
            + "; ".join(parts)
            + ". See ../shared/data/scfoundation/OFFICIAL_CHECKPOINT.md for the expected layout"
        )


def _few(items: list[str]) -> str:
    return ", ".join(items[:6]) + (f" … ({len(items)} in all)" if len(items) > 6 else "")


def _shape(state: Mapping[str, Tensor], official: str) -> tuple[int, ...]:
    value = state[official] if official in state else state["model." + official]
    return tuple(value.shape)


def official_model(
    ckpt: Mapping[str, Any],
    variant: str = "cell",
    cfg: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
    source: str = "<official checkpoint>",
) -> XTrimoGene:
    """Build a model from an already loaded official checkpoint dict (see
    :func:`load_official_checkpoint`)."""
    if not isinstance(ckpt, Mapping):
        raise OfficialCheckpointError(f"{source} holds a {type(ckpt).__name__}, not a dict")
    if variant not in OFFICIAL_VARIANTS:
        raise OfficialCheckpointError(
            f"variant must be one of {OFFICIAL_VARIANTS} ('cell' for cell embeddings, 'gene' for "
            f"gene embeddings / expression, 'rde' for read-depth enhancement), got {variant!r}"
        )
    if variant in ckpt:
        entry = ckpt[variant]
    elif "state_dict" in ckpt and not any(v in ckpt for v in OFFICIAL_VARIANTS):
        entry = ckpt  # a single-variant Lightning file (e.g. saved by the official fine-tuning)
        log.info("%s has no gene/cell/rde entries; reading its top-level state_dict", source)
    else:
        raise OfficialCheckpointError(
            f"{source} has no {variant!r} entry (found {sorted(map(str, ckpt))}); the official "
            f"models.ckpt holds {list(OFFICIAL_VARIANTS)}"
        )
    if not isinstance(entry, Mapping) or "state_dict" not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, Mapping) else type(entry).__name__
        raise OfficialCheckpointError(f"{source}[{variant!r}] has no 'state_dict' (found {keys})")
    state = entry["state_dict"]
    if cfg is None:
        config = entry.get("config")
        if isinstance(config, Mapping) and config.get("model_config"):
            cfg = official_model_config(config)
        else:
            log.warning("%s[%r] carries no model config; assuming the 100m layout", source, variant)
            cfg = ModelConfig.from_name("100m")
    # build on the meta device and adopt the file's tensors: no 119M-parameter random init
    with torch.device("meta"):
        model = XTrimoGene(cfg)
    check_official_state(model, state, source)
    expected = model.state_dict()
    converted = {
        k: v.to(dtype=expected[k].dtype) for k, v in convert_official_state_dict(state).items()
    }
    model.load_state_dict(converted, assign=True)
    return model.to(map_location).eval()


def load_official_checkpoint(
    path: str | Path,
    variant: str = "cell",
    cfg: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> XTrimoGene:
    """Build a model from the official ``models.ckpt`` (``gene`` / ``cell`` / ``rde`` entries).

    The layout follows ``../shared/data/scfoundation/OFFICIAL_CHECKPOINT.md``: each variant holds a
    ``config`` (flattened as the official ``convertconfig`` does, then mapped to a
    :class:`ModelConfig`) and a ``state_dict`` whose keys carry the Lightning ``model.`` prefix.
    Every key and shape is checked, so a surprise fails loudly instead of loading garbage; fp32,
    bf16 and fp16 weights are cast to fp32. Untested against the real file (not available here).
    The gene order is the official ``OS_scRNA_gene_index.19264.tsv``, which is the scfm vocabulary.

    Parameters
    ----------
    variant
        ``cell`` (cell embeddings), ``rde`` (read-depth enhancement) or ``gene`` (gene embeddings).
    cfg
        Sizes to build; default: from the file's config (or the ``100m`` preset if it has none).
    """
    ckpt = load_weights_only(Path(path))
    return official_model(ckpt, variant, cfg, map_location, source=str(path))


def load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` to CPU, memory-mapped where the file format allows it.

    Raises :class:`OfficialCheckpointError` (with a re-save recipe) when the file holds pickled
    objects besides tensors and plain containers.
    """
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise OfficialCheckpointError(
            f"{path} holds pickled Python objects besides tensors and plain containers; scfm "
            "only reads checkpoints with torch.load(weights_only=True), so no code in the file "
            "runs. If you trust the file, re-save just the weights once: "
            "ck = torch.load(path, weights_only=False); torch.save({v: {'config': ck[v]['config'], "
            "'state_dict': ck[v]['state_dict']} for v in ('gene', 'cell', 'rde')}, 'clean.ckpt')"
            f" ({str(exc).splitlines()[0]})"
        ) from exc
