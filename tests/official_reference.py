"""The official scFoundation code as the reference for parity tests and the parity benchmark.

The unmodified official model code lives in ``../shared/reference/scfoundation_official``
(Apache-2.0; never copied into this project). This module imports it from there, builds an
official model with random weights, writes it in the official ``models.ckpt`` layout, reads it
back with the official ``convertconfig`` (what ``load_model_frommmf`` does, minus ``.cuda()``),
and reproduces the steps of the official ``get_embedding.py`` at batch size 1.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

OFFICIAL_DIR = Path(__file__).resolve().parents[2] / "shared/reference/scfoundation_official"
VARIANTS = ("cell", "gene", "rde")


@cache
def official_modules() -> tuple[Any, ModuleType]:
    """``(select_model, load)``: the official model builder and its ``load.py`` helpers."""
    if not OFFICIAL_DIR.is_dir():
        raise FileNotFoundError(
            f"{OFFICIAL_DIR} not found: the official scFoundation code must sit in "
            "../shared/reference beside the checkout"
        )
    if str(OFFICIAL_DIR) not in sys.path:
        sys.path.insert(0, str(OFFICIAL_DIR))
    from pretrainmodels import select_model  # the official package

    spec = importlib.util.spec_from_file_location(
        "scfoundation_official_load", OFFICIAL_DIR / "load.py"
    )
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    return select_model, load


def official_config(
    enc: tuple[int, int, int] = (64, 2, 4), dec: tuple[int, int, int, int] = (32, 2, 2, 16)
) -> dict[str, Any]:
    """A variant's nested config as stored in ``models.ckpt`` (the 0.1B layout, resized).

    ``enc`` = (width, depth, heads), ``dec`` = (width, depth, heads, head dim); the released model
    is ``(768, 12, 12)`` and ``(512, 6, 8, 64)``.
    """
    model = {
        "encoder": {
            "hidden_dim": enc[0], "depth": enc[1], "heads": enc[2], "dim_head": 64,
            "module_type": "transformer", "norm_first": False, "seq_len": 19266,
        },
        "decoder": {
            "hidden_dim": dec[0], "depth": dec[1], "heads": dec[2], "dim_head": dec[3],
            "module_type": "performer", "norm_first": False, "seq_len": 19266,
        },
        "model": "mae_autobin", "n_class": 104, "pad_token_id": 103, "mask_token_id": 102,
        "bin_num": 100,
        "bin_alpha": 1.0, "seq_len": 19266, "gene_num": 19266,
    }  # fmt: skip
    rnaseq = {"bin_num": 100, "bin_type": "auto_bin", "value_mask_prob": 0.3}
    return {
        "model": "mae_autobin",
        "model_config": {"mae_autobin": model},
        "dataset_config": {"rnaseq": rnaseq},
    }


def random_official_model(config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The official model with random weights that exercise every parameter.

    LayerNorm gains and biases are randomized (a mapping error would show), and the decoder's
    key projection of the first head is scaled up, so heads differ in key norm (the FAVOR+ key
    stabiliser matters then).
    """
    select_model, load = official_modules()
    flat = load.convertconfig({"config": config, "state_dict": {}})["config"]
    torch.manual_seed(seed)
    model = select_model(flat)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "emb_mask" in name or "emb_pad" in name:
                p.copy_(torch.randn_like(p))
        d_head = config["model_config"]["mae_autobin"]["decoder"]["dim_head"]
        for layer in model.decoder.performer.net.layers:
            layer[0].fn.to_k.weight[:d_head] *= 4.0
    return model.eval()


def save_official_checkpoint(path: Path, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """``models.ckpt`` as released: ``{variant: {"config", "state_dict" with "model." keys}}``."""
    state = {"model." + k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({v: {"config": config, "state_dict": state} for v in VARIANTS}, path)
    return path


def load_official(path: Path, key: str = "cell") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The official ``load_model_frommmf`` without ``.cuda()``: model (eval) and flat config."""
    select_model, load = official_modules()
    data = load.convertconfig(torch.load(path, map_location="cpu", weights_only=True)[key])
    model = select_model(data["config"])
    model.load_state_dict(data["model_state_dict"])
    return model.eval(), data["config"]


# ----------------------------------------------------------------------------- the cells
def cells_across_depths(adata, n: int):
    """``n`` cells of ``adata`` spread over its range of depths (quantiles of the total count)."""
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    order = np.argsort(totals)
    return adata[np.sort(order[np.linspace(0, totals.size - 1, n).round().astype(int)])].copy()


def official_gene_selection(adata) -> np.ndarray:
    """The official ``main_gene_selection``: exact gene names reindexed to the vocabulary
    (missing genes are zero columns), cells × 19,264."""
    from scfm.data.genes import GeneVocab

    vocab = GeneVocab.load()
    col = {g: i for i, g in enumerate(adata.var_names)}
    X = np.asarray(adata.X.todense(), dtype=np.float64)
    out = np.zeros((adata.n_obs, len(vocab)))
    for j, name in enumerate(vocab.names):
        if name in col:
            out[:, j] = X[:, col[name]]
    return out


# ----------------------------------------------------------- get_embedding.py, batch size 1
def official_rows(
    X_vocab: np.ndarray,
    tgthighres: str = "t4",
    input_type: str = "singlecell",
    pre_normalized: str = "F",
    totals: np.ndarray | None = None,
) -> list[torch.Tensor]:
    """One ``(1, 19266)`` input row per cell, as ``get_embedding.py`` builds it.

    ``X_vocab``: cells × 19,264 values in vocabulary order (the official ``main_gene_selection``
    output): raw counts for ``pre_normalized="F"``, log1p-normalized values for ``"T"`` and
    ``"A"`` (then ``totals`` are the appended total-count column). Bulk: the official
    ``--input_type bulk --pre_normalized F`` (scanpy ``normalize_total`` + ``log1p`` first).
    """
    X = np.asarray(X_vocab, dtype=np.float64)
    rows = []
    if input_type == "bulk":
        import anndata as ad
        import scanpy as sc

        a = ad.AnnData(X.copy())
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
        for x in np.asarray(a.X):
            total = np.log10(x.sum())
            rows.append(torch.tensor(x.tolist() + [total, total]).unsqueeze(0))
        return rows
    for i, x in enumerate(X):
        if pre_normalized == "F":
            tmpdata = np.log1p(x / x.sum() * 1e4).tolist()
        else:
            tmpdata = x.tolist()
        total = totals[i] if pre_normalized == "A" else x.sum()
        kind, value = tgthighres[0], float(tgthighres[1:])
        if kind == "f":
            T = np.log10(total * value)
        elif kind == "a":
            T = np.log10(total) + value
        else:
            T = value
        rows.append(torch.tensor(tmpdata + [T, np.log10(total)]).unsqueeze(0))
    return rows


@torch.no_grad()
def official_cell_embedding(model, config, row: torch.Tensor, pool_type: str = "all") -> np.ndarray:
    """``--output_type cell``."""
    _, load = official_modules()
    value_labels = row > 0
    x, x_padding = load.gatherData(row, value_labels, config["pad_token_id"])
    data_gene_ids = torch.arange(19266).repeat(row.shape[0], 1)
    position_gene_ids, _ = load.gatherData(data_gene_ids, value_labels, config["pad_token_id"])
    x = model.token_emb(torch.unsqueeze(x, 2).float(), output_weight=0)
    x += model.pos_emb(position_gene_ids)
    h = model.encoder(x, x_padding)
    if pool_type == "all":
        parts = [h[:, -1, :], h[:, -2, :], h[:, :-2, :].max(dim=1).values, h[:, :-2, :].mean(dim=1)]
        out = torch.concat(parts, axis=1)
    else:
        out = h.max(dim=1).values
    return out.squeeze(0).numpy()


@torch.no_grad()
def _official_forward(model, config, row: torch.Tensor) -> torch.Tensor:
    _, load = official_modules()
    (enc, enc_pos, enc_pad, enc_labels, dec, dec_pad, _, _, dec_pos) = load.getEncoerDecoderData(
        row.float(), row.float(), config
    )
    return model.forward(
        x=enc, padding_label=enc_pad, encoder_position_gene_ids=enc_pos,
        encoder_labels=enc_labels, decoder_data=dec, mask_gene_name=False, mask_labels=None,
        decoder_position_gene_ids=dec_pos, decoder_data_padding_labels=dec_pad,
    )  # fmt: skip


def official_gene_embedding(model, config, row: torch.Tensor) -> np.ndarray:
    """``--output_type gene``: ``(19264, D)`` decoder states (``to_final`` removed)."""
    to_final, model.to_final = model.to_final, None
    try:
        return _official_forward(model, config, row)[0, :19264].numpy()
    finally:
        model.to_final = to_final


def official_expression(model, config, row: torch.Tensor) -> np.ndarray:
    """``--output_type gene_expression``: ``(19264,)`` predicted values."""
    return _official_forward(model, config, row)[0, :19264].numpy()


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|`` (the parity tolerance's measure)."""
    expected = np.asarray(expected, dtype=np.float64)
    return float(
        np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / np.abs(expected).max()
    )


def per_cell_error(actual, expected) -> float:
    """The worst :func:`max_rel_error` over cells."""
    return max(max_rel_error(a, e) for a, e in zip(actual, expected, strict=True))
