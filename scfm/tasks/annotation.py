"""Cell-type annotation head: an MLP on scfm cell embeddings (or on a partly fine-tuned encoder).

Two data modules feed the same head:

* :class:`EmbeddingData` — cell embeddings computed once with a frozen backbone
  (``scfm.inference.embed``), the paper's default and fast enough for Ray Tune sweeps on a CPU;
* :class:`PackedCellData` — the cells themselves (packed nonzero genes), for fine-tuning the last
  ``finetune_layers`` encoder layers together with the MLP (:class:`BackboneClassifier`).

Targets are indices into the training classes; test cells of classes never seen in training get
-1 (no method can predict them; they still count in accuracy).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.runtime import autocast, resolve_device
from scfm.tasks.base import DataModule, HeadSpec, SplitName
from scfm.tasks.labelled import Split
from scfm.tasks.metrics import classification_metrics

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ data modules
@dataclass
class _LabelledRows:
    """Class targets and the row indices of each split (train = training cells minus val)."""

    targets: np.ndarray  # (n,) int64, -1 = class not in training
    classes: list[str]
    rows: dict[str, np.ndarray]

    def size(self, split: SplitName) -> int:
        return int(self.rows[split].size)

    def _order(self, split: SplitName, batch_size: int, shuffle: bool, seed: int):
        rows = self.rows[split]
        if shuffle:
            rows = rows[np.random.default_rng(seed).permutation(rows.size)]
        for start in range(0, rows.size, batch_size):
            yield rows[start : start + batch_size]

    def labels(self, split: SplitName) -> np.ndarray:
        """String labels of a split's cells (``"<unseen>"`` never occurs: use the source labels)."""
        return np.asarray(self.classes, dtype=object)[self.targets[self.rows[split]]]


def class_targets(labels: np.ndarray, split: Split) -> tuple[np.ndarray, list[str], dict]:
    """Targets over the training classes and the rows of ``train`` / ``val`` / ``test``."""
    classes = sorted(set(labels[split.train]))
    index = {c: i for i, c in enumerate(classes)}
    targets = np.array([index.get(c, -1) for c in labels], dtype=np.int64)
    rows = {"train": split.train_only, "val": split.val, "test": split.test}
    return targets, classes, rows


@dataclass
class EmbeddingData(_LabelledRows):
    """Precomputed features ``(n_cells, d)`` (frozen backbone)."""

    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @classmethod
    def from_split(cls, features: np.ndarray, labels: np.ndarray, split: Split) -> EmbeddingData:
        targets, classes, rows = class_targets(labels, split)
        return cls(targets, classes, rows, np.ascontiguousarray(features, dtype=np.float32))

    def spec(self) -> HeadSpec:
        return HeadSpec("annotation", self.features.shape[1], len(self.classes), self.classes)

    def batches(
        self, split, batch_size, *, shuffle=False, seed=0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in self._order(split, batch_size, shuffle, seed):
            yield torch.from_numpy(self.features[idx]), torch.from_numpy(self.targets[idx])

    def feature_stats(self, _model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        x = self.features[self.rows["train"]]
        return torch.from_numpy(x.mean(axis=0)), torch.from_numpy(x.std(axis=0))


@dataclass
class PackedCellData(_LabelledRows):
    """Cells as vocabulary counts, batched into packed model input (encoder fine-tuning)."""

    counts: sp.csr_matrix = field(default_factory=lambda: sp.csr_matrix((0, 0)))
    totals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    backbone_config: dict[str, Any] = field(default_factory=dict)
    finetune_layers: int = 1

    @classmethod
    def from_split(
        cls,
        vocab_counts: sp.csr_matrix,
        totals: np.ndarray,
        labels: np.ndarray,
        split: Split,
        backbone_config: Mapping[str, Any],
        finetune_layers: int = 1,
    ) -> PackedCellData:
        targets, classes, rows = class_targets(labels, split)
        counts = sp.csr_matrix(vocab_counts, dtype=np.float32)
        counts.sort_indices()
        return cls(
            targets,
            classes,
            rows,
            counts,
            np.asarray(totals, np.float64),
            dict(backbone_config),
            finetune_layers,
        )

    def spec(self) -> HeadSpec:
        in_dim = 4 * int(self.backbone_config["enc_dim"])
        return HeadSpec(
            "annotation",
            in_dim,
            len(self.classes),
            self.classes,
            backbone_config=self.backbone_config,
            finetune_layers=self.finetune_layers,
        )

    def cell_batch(self, idx: np.ndarray):
        from scfm.data.packed import PackedCells
        from scfm.model.rda import prepare_inference

        return prepare_inference(PackedCells.from_csr(self.counts[idx], self.totals[idx]))

    def batches(self, split, batch_size, *, shuffle=False, seed=0):
        for idx in self._order(split, batch_size, shuffle, seed):
            yield self.cell_batch(idx), torch.from_numpy(self.targets[idx])

    @torch.no_grad()
    def feature_stats(self, model: BackboneClassifier) -> tuple[Tensor, Tensor]:
        """Mean / std of the initial backbone's embeddings of the training cells."""
        feats = []
        was_training = model.training
        model.eval()
        for idx in self._order("train", 64, False, 0):
            feats.append(model.embed(self.cell_batch(idx)).float())
        model.train(was_training)
        x = torch.cat(feats)
        return x.mean(dim=0), x.std(dim=0, unbiased=False)


# ----------------------------------------------------------------------------------- modules
class Standardize(nn.Module):
    """``(x - mean) / std`` with the training cells' statistics, stored as buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class MLPClassifier(nn.Module):
    """Standardize → (Linear → GELU → Dropout) × n_layers → Linear to the classes."""

    def __init__(
        self, in_dim: int, n_classes: int, hidden_dim: int, n_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.standardize = Standardize(in_dim)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        self.register_buffer("class_weight", torch.ones(n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.standardize(x.float()))  # (B, K)


class BackboneClassifier(nn.Module):
    """An XTrimoGene whose last ``finetune_layers`` encoder layers train with the MLP on top.

    Everything below those layers (value / gene embeddings, earlier layers) stays frozen.
    """

    def __init__(self, backbone: nn.Module, mlp: MLPClassifier, finetune_layers: int) -> None:
        super().__init__()
        n_layers = len(backbone.encoder.layers)
        if not 1 <= finetune_layers <= n_layers:
            raise ValueError(
                f"finetune_layers must be between 1 and the encoder depth {n_layers}, "
                f"got {finetune_layers} (0 = frozen backbone: use precomputed embeddings)"
            )
        self.backbone = backbone
        self.mlp = mlp
        for p in backbone.parameters():
            p.requires_grad_(False)
        for layer in backbone.encoder.layers[n_layers - finetune_layers :]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in backbone.encoder.norm.parameters():
            p.requires_grad_(True)

    @property
    def class_weight(self) -> Tensor:
        return self.mlp.class_weight

    def embed(self, batch) -> Tensor:
        return self.backbone.embed_cells(*batch.encoder_inputs())  # (B, 4E)

    def forward(self, batch) -> Tensor:
        return self.mlp(self.embed(batch))


# -------------------------------------------------------------------------------------- head
@dataclass
class AnnotationHead:
    """MLP classifier over cell embeddings; selects epochs and trials on validation macro-F1.

    Parameters
    ----------
    backbone_state
        Initial backbone weights when fine-tuning encoder layers (:class:`PackedCellData`);
        None for precomputed embeddings.
    """

    backbone_state: dict[str, Tensor] | None = None
    task: str = "annotation"
    metric: str = "val_macro_f1"
    mode: Literal["min", "max"] = "max"

    def default_config(self) -> dict[str, Any]:
        return {"hidden_dim": 256, "n_layers": 1, "dropout": 0.2, "class_weight": True}

    def search_space(self) -> dict[str, Any]:
        from ray import tune

        return {
            "lr": tune.loguniform(1e-4, 1e-2),
            "weight_decay": tune.loguniform(1e-6, 1e-2),
            "hidden_dim": tune.choice([64, 128, 256, 512]),
            "n_layers": tune.choice([1, 2]),
            "dropout": tune.uniform(0.0, 0.5),
            "batch_size": tune.choice([32, 64, 128]),
        }

    def build(self, config: Mapping[str, Any], spec: HeadSpec, data: DataModule | None = None):
        mlp = MLPClassifier(
            spec.in_dim,
            spec.n_outputs,
            int(config["hidden_dim"]),
            int(config["n_layers"]),
            float(config["dropout"]),
        )
        model: nn.Module = mlp
        if spec.backbone_config is not None:
            from scfm.model import ModelConfig, XTrimoGene

            backbone = XTrimoGene(ModelConfig.from_dict(dict(spec.backbone_config)))
            if self.backbone_state is not None:
                backbone.load_state_dict(self.backbone_state)
            model = BackboneClassifier(backbone, mlp, spec.finetune_layers)
        if data is not None:
            mlp.standardize.set(*data.feature_stats(model))
            if config.get("class_weight", True):
                mlp.class_weight.copy_(balanced_weights(data, spec.n_outputs))
        return model

    def loss(self, model: nn.Module, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target, weight=model.class_weight)

    @torch.no_grad()
    def score(self, model, data, split, config) -> dict[str, float]:
        logits, target = predict_logits(model, data, split, int(config.get("batch_size", 256)))
        known = target >= 0
        loss = F.cross_entropy(logits[known], target[known]).item() if known.any() else float("nan")
        pred = logits.argmax(dim=1).numpy()
        classes = np.asarray(data.classes + ["<unseen>"], dtype=object)
        y_true = classes[target.numpy()]  # -1 → "<unseen>"
        m = classification_metrics(y_true, classes[pred], scored=sorted(set(y_true[known])))
        return {
            f"{split}_loss": loss,
            f"{split}_accuracy": m.accuracy,
            f"{split}_macro_f1": m.macro_f1,
        }


def balanced_weights(data: _LabelledRows, n_classes: int) -> Tensor:
    """``n / (K · count_k)`` over the training rows (scikit-learn's ``class_weight='balanced'``)."""
    t = data.targets[data.rows["train"]]
    counts = np.bincount(t[t >= 0], minlength=n_classes).astype(np.float64)
    w = np.divide(t.size, n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return torch.from_numpy(w.astype(np.float32))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: DataModule,
    split: SplitName,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits ``(n, K)`` (float32, CPU) and targets of a split's cells, in row order."""
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    was_training = model.training
    model.eval()
    outs, targets = [], []
    for inputs, target in data.batches(split, batch_size):
        with autocast(dev):
            outs.append(model(inputs.to(dev)).float().cpu())
        targets.append(target)
    model.train(was_training)
    return torch.cat(outs), torch.cat(targets)


def predict_labels(model: nn.Module, data: DataModule, split: SplitName) -> np.ndarray:
    """Predicted class names of a split's cells, in row order."""
    logits, _ = predict_logits(model, data, split)
    return np.asarray(data.spec().classes, dtype=object)[logits.argmax(dim=1).numpy()].astype(str)
