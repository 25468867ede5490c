"""Where and in what precision inference runs: device choice, autocast, thread-safe defaults.

Nothing here hard-codes a device: ``device="auto"`` picks CUDA when it is available, and bf16
autocast is switched on for CUDA only (on CPU, bf16 matrix products are slower than fp32 on most
machines and change results more than they save).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available, else ``cpu``; anything else is passed to torch.

    Raises
    ------
    ValueError
        A CUDA device was asked for on a machine without one.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} asked for CUDA but torch sees no GPU "
            f"(torch {torch.__version__}); use device='cpu' or 'auto'"
        )
    return resolved


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto`` means bf16 on CUDA, fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Switch torch's fused ``TransformerEncoderLayer`` inference path, restoring it afterwards.

    With a key-padding mask the fused path materializes every (L × L) score matrix and runs a
    masked softmax; the regular path calls ``scaled_dot_product_attention`` (flash / memory-
    efficient kernels). On CPU the regular path measured 2-3× faster on Kang cells (≈ 300
    nonzero genes, ``benchmarks/inference_speed.py``); under autocast torch takes it anyway.
    """
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def inference_context(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode``, the SDPA attention path, and autocast to ``dtype`` if given."""
    with torch.inference_mode(), mha_fastpath(False):
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode for the block, then the caller's mode back (a model mid-training stays so)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
