"""The model side of inference: packed loader batches in, numpy arrays out.

:class:`InferenceEngine` holds a model on a device and runs it under ``torch.inference_mode`` (and
bf16 autocast on CUDA). It is what :func:`scfm.inference.embed`, the Ray Data actors and the
benchmark share. Cell embeddings run the encoder only; the decoder (19,266 positions per cell)
runs only for gene embeddings and expression prediction.

:meth:`InferenceEngine.embed_stream` keeps a GPU fed: a background thread prepares the next
batches on the host (normalization, packing, pinned memory) while the device computes; batches
go over with non-blocking copies, and each result comes back one batch late (an asynchronous
copy and a CUDA event), so the host never waits for the batch the device is working on. Cell
embeddings on CUDA skip padding (``attention="jagged"``: nested jagged tensors through
``scaled_dot_product_attention``); ``compile=True`` runs the encoder through ``torch.compile``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from scfm.data.background import background
from scfm.data.packed import NormalizedCells, PackedCells, depth_token
from scfm.inference.settings import POOL_PARTS, PoolPart, check_pool  # noqa: F401
from scfm.model.config import N_GENES, S_POS, T_POS
from scfm.model.rda import CellBatch, prepare_inference
from scfm.model.xtrimogene import XTrimoGene
from scfm.runtime import (
    Precision,
    evaluating,
    inference_context,
    resolve_device,
    resolve_precision,
)

TargetDepth = float | str | np.ndarray | None
Attention = Literal["auto", "padded", "jagged"]

CPU_MAX_TOKENS = 4096
GPU_MAX_TOKENS = 65536

_DEPTH_RE = re.compile(r"^([tfa])(\d+(?:\.\d*)?|\.\d+)$")


def target_T(spec: TargetDepth, S: np.ndarray) -> np.ndarray:
    """The T token (log10 target depth) per cell from a depth spec and the cells' S tokens.

    ``None`` → T = S (the cell's own depth, the official ``f1``); a number → that log10 depth for
    every cell; a ``(B,)`` array → one log10 depth per cell; or the official ``--tgthighres``
    strings: ``"t4"`` → T = 4, ``"f10"`` → T = log10(total · 10) = S + 1, ``"a1"`` → T = S + 1.
    """
    S = np.asarray(S, dtype=np.float64).reshape(-1)
    if spec is None or (isinstance(spec, str) and spec.strip().upper() == "S"):
        return S.astype(np.float32)
    if isinstance(spec, np.ndarray):
        if spec.shape != S.shape or not np.isfinite(spec).all():
            raise ValueError(f"per-cell target depths must be finite with shape {S.shape}")
        return spec.astype(np.float32)
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        if not math.isfinite(spec):
            raise ValueError(f"target depth must be finite, got {spec}")
        return np.full(S.shape, spec, dtype=np.float32)
    m = _DEPTH_RE.match(str(spec).strip().lower())
    if not m:
        raise ValueError(
            f"target depth {spec!r} not understood: use None (T = S), a log10 depth such as 4.0, "
            "or the official forms 't4' (T = 4), 'f10' (10 × the cell's total), 'a1' (S + 1)"
        )
    kind, x = m.group(1), float(m.group(2))
    if kind == "t":
        return np.full(S.shape, x, dtype=np.float32)
    if kind == "a":
        return (S + x).astype(np.float32)
    if x <= 0:
        raise ValueError(f"target depth {spec!r}: the factor after 'f' must be > 0")
    return (S + math.log10(x)).astype(np.float32)


def depth_rows(spec: TargetDepth, rows: np.ndarray | slice) -> TargetDepth:
    """A per-cell depth array restricted to ``rows``; any other spec unchanged."""
    return spec[rows] if isinstance(spec, np.ndarray) else spec


Cells = PackedCells | NormalizedCells


def batch_S(cells: Cells) -> np.ndarray:
    """S tokens of a batch: given (normalized cells) or from the totals (raw counts)."""
    if isinstance(cells, NormalizedCells):
        return cells.S.astype(np.float64)
    return depth_token(cells.total_counts)


def pool_states(
    h: Tensor, gene_ids: Tensor, padding_mask: Tensor, parts: Sequence[PoolPart] = POOL_PARTS
) -> Tensor:
    """Cell vectors ``(B, len(parts) · E)`` from encoder states ``(B, L, E)``.

    ``S`` / ``T``: the state of that depth token; ``max`` / ``mean``: over the gene tokens only
    (T, S and padding excluded), as the official ``pool_type="all"``; ``max_all``: over every
    token, T and S included, as the official ``pool_type="max"``. A cell without expressed
    genes gets zero ``max`` / ``mean`` pools.
    """
    valid = ~padding_mask
    is_gene = (valid & (gene_ids < N_GENES)).unsqueeze(-1)  # (B, L, 1)
    out = []
    for part in parts:
        if part in ("S", "T"):
            pos = S_POS if part == "S" else T_POS
            sel = (valid & (gene_ids == pos)).unsqueeze(-1)
            out.append(h.masked_fill(~sel, 0.0).sum(dim=1))  # (B, E)
        elif part == "max":
            mx = h.masked_fill(~is_gene, float("-inf")).amax(dim=1)
            out.append(torch.where(is_gene.any(dim=1), mx, torch.zeros_like(mx)))
        elif part == "max_all":  # every token, T and S included (official pool_type="max")
            out.append(h.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1))
        else:
            n = is_gene.sum(dim=1).clamp(min=1)
            out.append(h.masked_fill(~is_gene, 0.0).sum(dim=1) / n)
    return torch.cat(out, dim=-1)


class InferenceEngine:
    """A model on a device, ready to embed packed cells.

    Parameters
    ----------
    model
        An :class:`XTrimoGene`, moved to ``device``; each call runs it in eval mode and then
        restores its train/eval mode.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``, …
    precision
        ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
    """

    def __init__(
        self,
        model: XTrimoGene,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        attention: Attention = "auto",
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self._precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device)
        if attention not in ("auto", "padded", "jagged"):
            raise ValueError(f"attention must be 'auto', 'padded' or 'jagged', got {attention!r}")
        # padding-free attention where it pays: big GPU batches (CPU batches are length-sorted
        # and small, and the math kernel for jagged tensors is no faster there)
        self.jagged = attention == "jagged" or (attention == "auto" and self.device.type == "cuda")
        self._encode: Callable[..., Tensor] = self.model.encode
        if compile:
            self._encode = torch.compile(self.model.encode, dynamic=True)

    @property
    def default_max_tokens(self) -> int:
        """Padded encoder tokens per batch when the caller sets none.

        On CPU a forward pass is compute-bound already for one cell, and big padded batches
        got slower (benchmarks/inference_speed.py: 10m on Kang cells, 1 thread: 12.7 cells/s at
        4,096 tokens, 5.4 at 8,192, 3.6 at 16,384), so CPU batches stay small. GPUs need big
        batches to fill the device. Not tuned on a GPU yet.
        """
        return CPU_MAX_TOKENS if self.device.type == "cpu" else GPU_MAX_TOKENS

    def resolve_max_tokens(self, max_tokens: int | None) -> int | None:
        """None → :attr:`default_max_tokens`; 0 → no cap; else the value."""
        if max_tokens is None:
            return self.default_max_tokens
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 (0 = no cap), got {max_tokens}")
        return max_tokens or None

    @property
    def precision(self) -> str:
        return self._precision

    def host_batch(self, batch: Cells, depth: TargetDepth = None) -> CellBatch:
        """The host side of a batch: model tensors (pinned when the device is a GPU)."""
        cells = prepare_inference(batch, target_T=target_T(depth, batch_S(batch)))
        return cells.pin_memory() if self.device.type == "cuda" else cells

    def _inputs(self, batch: Cells, depth: TargetDepth) -> CellBatch:
        return self.host_batch(batch, depth).to(self.device, non_blocking=True)

    def _embed_on_device(self, cells: CellBatch, pool: Sequence[PoolPart]) -> Tensor:
        ids, vals, pad = cells.encoder_inputs()
        with inference_context(self.device, self._precision), evaluating(self.model):
            h = self._encode(ids, vals, pad, jagged=self.jagged)  # (B, L, E)
            return pool_states(h.float(), ids, pad, pool)

    def embed(
        self,
        batch: Cells,
        pool: Sequence[PoolPart] = POOL_PARTS,
        depth: TargetDepth = None,
    ) -> np.ndarray:
        """``(B, len(pool) · E)`` float32 cell embeddings of a batch (encoder only).

        ``batch``: raw counts (:class:`PackedCells`) or model-scale values
        (:class:`NormalizedCells`).
        """
        return self._embed_on_device(self._inputs(batch, depth), pool).cpu().numpy()

    def embed_stream(
        self,
        batches: Iterable[tuple[Any, Cells, TargetDepth]],
        pool: Sequence[PoolPart] = POOL_PARTS,
        prefetch: int = 2,
    ) -> Iterator[tuple[Any, np.ndarray]]:
        """``(key, embeddings)`` for each ``(key, cells, depth)``, pipelined (module docstring).

        Host preparation runs up to ``prefetch`` batches ahead in a background thread.
        """
        host = background(
            ((key, self.host_batch(cells, depth)) for key, cells, depth in batches),
            prefetch,
            "scfm-inference-host",
        )
        pending: tuple[Any, Callable[[], np.ndarray]] | None = None
        for key, cells in host:
            out = self._embed_on_device(cells.to(self.device, non_blocking=True), pool)
            fetch = self._fetch_later(out)
            if pending is not None:
                yield pending[0], pending[1]()
            pending = (key, fetch)
        if pending is not None:
            yield pending[0], pending[1]()

    def _fetch_later(self, out: Tensor) -> Callable[[], np.ndarray]:
        """Start copying a device result to the host; the returned call waits for that copy only."""
        if self.device.type != "cuda":
            return out.numpy
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait() -> np.ndarray:
            done.synchronize()
            return host.numpy()

        return wait

    def predict(
        self,
        batch: Cells,
        depth: TargetDepth = None,
        genes: np.ndarray | None = None,
        mask_zeros: bool = False,
    ) -> np.ndarray:
        """``(B, G)`` float32 predicted normalized expression (log1p of counts per 10k at depth T).

        ``genes`` picks vocabulary columns (default all 19,264). ``mask_zeros``: the genes a cell
        does not express enter the decoder as masked positions (the learned mask vector, as in
        pretraining, where only masked positions are scored) instead of as the value 0.
        """
        cells = self._inputs(batch, depth)
        ids, vals, pad = cells.encoder_inputs()
        masked = zero_mask(ids, pad) if mask_zeros else None
        with inference_context(self.device, self._precision), evaluating(self.model):
            pred = self.model(ids, vals, pad, masked)  # (B, 19264); T is in the packed input
            if genes is not None:
                pred = pred[:, torch.as_tensor(genes, device=pred.device, dtype=torch.long)]
        return pred.float().cpu().numpy()

    def gene_embeddings(
        self, batch: Cells, genes: np.ndarray | None = None, depth: TargetDepth = None
    ) -> np.ndarray:
        """``(B, G, D)`` float32 context gene embeddings (decoder states before the head)."""
        cells = self._inputs(batch, depth)
        ids, vals, pad = cells.encoder_inputs()
        with inference_context(self.device, self._precision), evaluating(self.model):
            z = self.model.gene_embeddings(ids, vals, pad)  # (B, 19264, D)
            if genes is not None:
                z = z[:, torch.as_tensor(genes, device=z.device, dtype=torch.long)]
        return z.float().cpu().numpy()


def zero_mask(gene_ids: Tensor, padding_mask: Tensor) -> Tensor:
    """``(B, 19264)`` bool: True for every gene that is not an encoder token of its cell."""
    B = gene_ids.shape[0]
    expressed = torch.zeros(B, N_GENES + 1, dtype=torch.bool, device=gene_ids.device)
    idx = gene_ids.masked_fill(padding_mask | (gene_ids >= N_GENES), N_GENES)
    expressed.scatter_(1, idx, True)
    return ~expressed[:, :N_GENES]
