"""The fine-tuning framework: a *head* (small torch module) + a *data module*, one training loop.

A downstream task plugs in by providing

* a :class:`DataModule`: batches ``(inputs, targets)`` of the ``train`` / ``val`` / ``test``
  cells. Inputs are either precomputed cell embeddings (frozen backbone, the paper's default:
  embed once, then train only the head) or packed cells (:class:`~scfm.model.rda.CellBatch`) when
  the last encoder layers are fine-tuned;
* a :class:`Head`: ``build`` the module from a flat config dict, its ``loss``, a ``score`` that
  returns validation metrics, the Ray Tune ``search_space`` and the ``metric`` / ``mode`` to
  select on.

:func:`fit_head` is the plain-torch loop (no Ray): seeded, early stopping on the head's metric,
keeps the best epoch's weights, calls ``report`` after every epoch so Ray Tune (``scfm.tasks.tune``)
can schedule (ASHA) and checkpoint. :func:`save_head` / :func:`load_head` write a self-describing
folder that ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from scfm.runtime import autocast, resolve_device

logger = logging.getLogger(__name__)

SplitName = Literal["train", "val", "test"]
HEAD_FORMAT = "scfm.head"
HEAD_VERSION = 1
HEAD_FILE = "head.pt"
HEAD_CONFIG_FILE = "head_config.json"

# Training options every head understands (a head's search space may cover any of them).
TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "max_epochs": 40,
    "patience": 8,  # epochs without improvement of the head's metric before stopping
    "seed": 0,
}


@dataclass
class HeadSpec:
    """What a head needs to rebuild its module without the data: dims, classes, backbone."""

    task: str
    in_dim: int
    n_outputs: int
    classes: list[str] = field(default_factory=list)
    backbone_config: dict[str, Any] | None = None  # set when encoder layers are fine-tuned
    finetune_layers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataModule(Protocol):
    """Batches of one task's cells; ``targets`` are class indices (or values for regression)."""

    def spec(self) -> HeadSpec: ...

    def size(self, split: SplitName) -> int: ...

    def batches(
        self,
        split: SplitName,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[tuple[Any, Tensor]]: ...


class Head(Protocol):
    """A downstream head: how to build, train and judge it."""

    task: str
    metric: str  # validation metric that selects epochs and trials, e.g. "val_macro_f1"
    mode: Literal["min", "max"]

    def default_config(self) -> dict[str, Any]: ...

    def search_space(self) -> dict[str, Any]: ...

    def build(
        self, config: Mapping[str, Any], spec: HeadSpec, data: DataModule | None = None
    ) -> nn.Module: ...

    def loss(self, model: nn.Module, output: Tensor, target: Tensor) -> Tensor: ...

    def score(
        self, model: nn.Module, data: DataModule, split: SplitName, config: Mapping[str, Any]
    ) -> dict[str, float]: ...


@dataclass
class FitResult:
    """A trained head (best epoch's weights loaded) and its history."""

    model: nn.Module
    config: dict[str, Any]
    spec: HeadSpec
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    seconds: float


Report = Callable[[dict[str, float], bool, nn.Module], None]


def full_config(head: Head, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Training defaults ← the head's defaults ← ``config``."""
    return {**TRAIN_DEFAULTS, **head.default_config(), **dict(config or {})}


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors and CellBatches both have ``.to``."""
    return x.to(device)


def is_better(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


OPTIMIZERS = ("adamw", "adam", "adagrad")


def make_optimizer(params, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``cfg["optimizer"]`` (default AdamW; Adagrad is the original SCAD's) with ``lr`` and
    ``weight_decay``."""
    name = str(cfg.get("optimizer", "adamw"))
    lr, wd = float(cfg["lr"]), float(cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def fit_head(
    head: Head,
    data: DataModule,
    config: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "auto",
    report: Report | None = None,
    progress: bool = False,
) -> FitResult:
    """Train a head (AdamW unless the config names another ``optimizer``); early stopping on
    ``head.metric``; best epoch's weights kept.

    Parameters
    ----------
    config
        Flat options: :data:`TRAIN_DEFAULTS` plus the head's own (see ``head.default_config``).
    report
        Called after every epoch with ``(metrics, improved, model)`` (Ray Tune reports here).
    progress
        Show a progress bar over epochs.
    """
    from tqdm.auto import tqdm

    cfg = full_config(head, config)
    if data.size("train") == 0 or data.size("val") == 0:
        raise ValueError(
            f"{data.size('train')} training and {data.size('val')} validation cells: a head needs "
            "both (too few labelled cells per class? lower the validation fraction or add cells)"
        )
    dev = resolve_device(device)
    torch.manual_seed(int(cfg["seed"]))
    spec = data.spec()
    model = head.build(cfg, spec, data).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    best = {head.metric: math.nan}
    best_state: dict[str, Tensor] | None = None
    best_epoch, stale = 0, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(1, int(cfg["max_epochs"]) + 1), desc=f"{head.task} head", disable=not progress)
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for inputs, target in data.batches(
            "train", int(cfg["batch_size"]), shuffle=True, seed=int(cfg["seed"]) * 100_003 + epoch
        ):
            inputs, target = to_device(inputs, dev), target.to(dev)
            with autocast(dev):
                out = model(inputs)
            loss = head.loss(model, out.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(target)
            n += len(target)
        metrics = {"epoch": float(epoch), "train_loss": total / max(n, 1)}
        metrics |= head.score(model, data, "val", cfg)
        improved = is_better(metrics[head.metric], best[head.metric], head.mode)
        if improved:
            best, best_epoch, stale = dict(metrics), epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        history.append(metrics)
        bar.set_postfix({head.metric: f"{metrics[head.metric]:.3f}"})
        if report is not None:
            report(metrics, improved, model)
        if stale >= int(cfg["patience"]):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, cfg, spec, best_epoch, best, history, time.perf_counter() - start)


# ------------------------------------------------------------------------------ save / load
def save_head(
    folder: str | Path,
    model: nn.Module,
    config: Mapping[str, Any],
    spec: HeadSpec,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``head.pt`` (tensors and plain types only) and ``head_config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": HEAD_FORMAT,
        "version": HEAD_VERSION,
        "config": _plain(dict(config)),
        "spec": _plain(spec.to_dict()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": _plain(dict(metadata or {})),
    }
    tmp = folder / (HEAD_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(folder / HEAD_FILE)
    summary = {k: payload[k] for k in ("format", "version", "config", "spec", "metadata")}
    (folder / HEAD_CONFIG_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return folder


def _plain(obj: Any) -> Any:
    """Plain Python types (numpy scalars → float/int), so weights_only loading accepts them."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def read_head(folder: str | Path) -> dict[str, Any]:
    """The validated payload of a head folder (or its ``head.pt``)."""
    file = Path(folder)
    if file.is_dir():
        file = file / HEAD_FILE
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise ValueError(f"{file} is not an scfm head checkpoint")
    if payload.get("version") != HEAD_VERSION:
        raise ValueError(
            f"{file} has head format version {payload.get('version')}, this scfm reads "
            f"{HEAD_VERSION}; re-train the head with this scfm"
        )
    return payload


def load_head(folder: str | Path, head: Head) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved head's module (eval mode) and return it with the payload."""
    payload = read_head(folder)
    spec = HeadSpec(**payload["spec"])
    model = head.build(payload["config"], spec, None)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload
