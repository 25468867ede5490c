"""Where and how code runs: device, precision, autocast, eval mode, the Ray connection.

Importing this module is cheap: torch and Ray are imported inside the functions.

One copy for every stage (inference, pretraining, fine-tuning). Nothing hard-codes a device:
``device="auto"`` picks CUDA when it is available; bf16 autocast is the default on CUDA only (on
CPU, bf16 matrix products are slower than fp32 on most machines and change results more than they
save). Ray is imported only inside :func:`ensure_ray`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is imported inside the functions: importing this module stays cheap
    import torch

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available, else ``cpu``; anything else is passed to torch.

    Raises
    ------
    ValueError
        A CUDA device was asked for on a machine without one.
    """
    import torch

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


def resolve_precision(precision: Precision | str, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` → bf16 on CUDA, fp32 elsewhere; ``fp32`` / ``bf16`` as given."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision  # type: ignore[return-value]


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast when ``precision`` resolves to bf16 on ``device``, else nothing."""
    import torch

    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Switch torch's fused ``TransformerEncoderLayer`` inference path, restoring it afterwards.

    With a key-padding mask the fused path materializes every (L × L) score matrix and runs a
    masked softmax; the regular path calls ``scaled_dot_product_attention`` (flash / memory-
    efficient kernels). On CPU the regular path measured 2-3× faster on Kang cells (≈ 300
    nonzero genes, ``benchmarks/inference_speed.py``); under autocast torch takes it anyway.
    """
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """``torch.inference_mode``, the SDPA attention path, and autocast as ``precision`` says."""
    import torch

    with torch.inference_mode(), mha_fastpath(False), autocast(device, precision):
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


def user_cache_dir(name: str) -> Path:
    """``$SCFM_CACHE_DIR/<name>``, else ``$XDG_CACHE_HOME/scfm/<name>`` (``~/.cache``)."""
    if os.environ.get("SCFM_CACHE_DIR"):
        return Path(os.environ["SCFM_CACHE_DIR"]) / name
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scfm" / name


def ensure_ray(address: str | None = None, **init_kwargs) -> None:
    """Connect to Ray once: ``address``, else ``RAY_ADDRESS``, else a local instance.

    Does nothing when Ray is already initialized (a test session, a Ray job's driver).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, log_to_driver=False, **init_kwargs)
    log.info("Ray: %s", "connected to " + address if address else "started a local instance")
