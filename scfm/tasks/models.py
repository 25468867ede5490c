"""The scfm backbones a downstream evaluation compares, each with an honest label.

Specs (CLI ``--model``, repeatable):

* a checkpoint folder, ``model.pt``, official ``models.ckpt`` or ``models:/name/version``
  (anything :func:`scfm.inference.load_model` accepts); labelled ``scfm-<preset> (<N> steps)``
  when the checkpoint records its step;
* ``random:<preset>`` — an untrained model with seeded random weights, labelled
  ``scfm random-init (<preset>)``. Evaluations add one for the architecture of the first model as
  a control: a pretrained model that cannot beat its own random initialisation has learned
  nothing useful for the task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scfm.model import ModelConfig, XTrimoGene

logger = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"


@dataclass
class Backbone:
    """A model to embed cells with, and how to name it in tables."""

    label: str
    model: XTrimoGene
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return self.source.startswith(RANDOM_PREFIX)


def random_init(config: ModelConfig | str, seed: int = 0) -> XTrimoGene:
    """An untrained model with reproducible weights (``torch.manual_seed(seed)``)."""
    cfg = ModelConfig.from_name(config) if isinstance(config, str) else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XTrimoGene(cfg)
    return model.eval()


def random_label(cfg: ModelConfig) -> str:
    return f"scfm random-init ({cfg.name})"


def trained_label(cfg: ModelConfig, metadata: dict[str, Any]) -> str:
    """``scfm-<preset> (<N> steps)`` when the step is known, else ``scfm-<preset>``."""
    step = metadata.get("step")
    return f"scfm-{cfg.name}" + (f" ({int(step)} steps)" if step not in (None, "") else "")


def load_backbone(spec: str, *, seed: int = 0, device: str = "cpu") -> Backbone:
    """A :class:`Backbone` from a ``--model`` spec (see the module docstring)."""
    if spec.startswith(RANDOM_PREFIX):
        preset = spec[len(RANDOM_PREFIX) :] or "tiny"
        model = random_init(preset, seed)
        return Backbone(random_label(model.cfg), model, spec, {"seed": seed})
    from scfm.inference import load_model_with_info

    model, info = load_model_with_info(spec, device=device)
    label = trained_label(model.cfg, dict(info.metadata))
    if info.kind == "official":
        label = "scFoundation (official 0.1B)"
    return Backbone(label, model, spec, {"kind": info.kind, **dict(info.metadata)})


def backbones_with_control(
    backbones: list[Backbone], *, control: bool = True, seed: int = 0
) -> list[Backbone]:
    """``backbones`` plus a random-init control of the first one's architecture (if missing)."""
    out = list(backbones)
    if not control:
        return out
    cfg = out[0].model.cfg if out else ModelConfig.from_name("tiny")
    if not any(b.is_random and b.model.cfg == cfg for b in out):
        out.append(
            Backbone(
                random_label(cfg),
                random_init(cfg, seed),
                f"{RANDOM_PREFIX}{cfg.name}",
                {"seed": seed},
            )
        )
    return out


def briefly_pretrain(
    vocab_counts,
    total_counts: np.ndarray,
    *,
    preset: str = "tiny",
    steps: int = 50,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> Backbone:
    """A model pretrained for a few RDA steps in this process (no Ray): for tests, benchmarks
    and demos on machines without a pretrained checkpoint. Labelled ``scfm-<preset> (N steps)``.

    Parameters
    ----------
    vocab_counts
        Cells × 19,264 CSR raw counts (``GeneMapping.apply``); labels are never used.
    total_counts
        Each cell's total over all input genes.
    """
    import scipy.sparse as sp
    from tqdm.auto import tqdm

    from scfm.data.packed import PackedCells
    from scfm.model.rda import RDAConfig, collate
    from scfm.runtime import resolve_device
    from scfm.train.loop import train_step

    dev = resolve_device(device)
    X = sp.csr_matrix(vocab_counts, dtype=np.float32)
    X.sort_indices()
    totals = np.asarray(total_counts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    model = random_init(preset, seed).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rda = RDAConfig()
    losses = []
    for _ in tqdm(range(steps), desc=f"pretrain {preset}", disable=not progress):
        rows = np.sort(rng.choice(X.shape[0], size=min(batch_size, X.shape[0]), replace=False))
        packed = PackedCells.from_csr(X[rows], totals[rows])
        result = train_step(
            model,
            [collate(packed, rda, rng)],
            opt,
            None,
            device=dev,
            precision="bf16" if dev.type == "cuda" else "fp32",
        )
        losses.append(result.loss)
    model.eval()
    meta = {"step": steps, "seed": seed, "first_loss": losses[0], "last_loss": losses[-1]}
    return Backbone(trained_label(model.cfg, meta), model, f"in-process:{preset}:{steps}", meta)


def embed_cells(
    adata, backbone: Backbone, *, batch_size: int = 64, device: str = "auto", progress: bool = False
) -> tuple[np.ndarray, float]:
    """Cell embeddings ``(n, 4E)`` via :func:`scfm.inference.embed`, and the seconds it took."""
    from scfm.inference import embed

    start = time.perf_counter()
    emb = embed(
        adata,
        backbone.model,
        batch_size=batch_size,
        device=device,
        progress=progress,
        key_added="X_scfm",
    )
    return emb, time.perf_counter() - start
