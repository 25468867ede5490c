"""The SCAD head: single-cell drug response by adversarial domain adaptation from bulk lines.

    source: bulk cell lines, labelled ─┐                      ┌─► response predictor ─► P(sensitive)
                                       ├─► feature extractor ─┤   (source rows only)
    target: single cells, unlabelled ──┘   (shared)           └─► gradient reversal ─► domain
                                                                  discriminator ─► P(bulk)

The modules follow the original SCAD (``SCADmodules.py``): extractor ``Linear(d, h) → BN → ReLU →
Dropout``; predictor ``Linear(h, z) → BN → ReLU → Dropout`` then 3 × ``[Linear(z, z), Dropout,
LeakyReLU]`` and ``Linear(z, 1)``; discriminator on the extractor's output behind a gradient
reversal with a fixed factor −1, 3 × ``[Linear(h, h), Dropout, LeakyReLU]`` and ``Linear(h, 1)``.
Loss = ``BCE(response of the source batch) + λ · BCE(domain of source ∪ target)``: λ
(``adv_weight``) is a loss weight, not a schedule, as in SCAD — the discriminator descends
``λ · BCE`` and the extractor, through the reversal, ascends it. Dropout 0.5, Adagrad lr 1e-3.

Each step takes a class-balanced source batch (weighted sampling with replacement, weight 1 /
class frequency — SCAD's ``WeightedRandomSampler``; ``balance="loss"`` weights the positive class
in the loss instead) and a target batch of the same size; both go through the extractor in one
pass, so BatchNorm normalizes them with one set of batch statistics (``separate_bn=True``: SCAD's
separate pass per domain).

Inputs (``SCADData``): frozen scfm embeddings (pool S, T, max, mean — the paper's 4 × hidden) or
raw expression (the original SCAD), built by :mod:`scfm.tasks.scad_eval`.

Deviations (deliberate):

* one extractor pass over both domains. SCAD passes each domain separately, so in training each
  is normalized by its own batch statistics: mean shifts are removed before the discriminator
  sees them (it loses its signal), and at evaluation the running statistics mix both domains, so
  the predictor is applied to a representation it was not trained on. On a synthetic shift the
  joint pass lets the adversary shrink the shift; the separate one does not;
* logits with ``BCEWithLogits`` (the same loss, numerically stable); no dropout on the
  discriminator's output logit (the original applied dropout to the logit itself);
* the input is standardized with the joint mean / SD of training source lines and target cells
  (SCAD's ``StandardScaler`` on raw expression; scFoundation's run left embeddings unscaled);
* the epoch is kept by the best source-validation AUROC with patience (SCAD trained a fixed number
  of epochs and kept the last); an epoch has ``max(source, target) / batch`` steps (SCAD: the
  number of target batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.tasks.base import DataModule, HeadSpec, SplitName
from scfm.tasks.deepcdr import Standardize
from scfm.tasks.metrics import average_precision, binary_auroc
from scfm.tasks.scad_data import CLASSES

Balance = Literal["sampler", "loss", "none"]


# ------------------------------------------------------------------------------ gradient reversal
class GradReverse(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-factor``."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.factor, None


def grad_reverse(x: Tensor, factor: float = 1.0) -> Tensor:
    """The gradient reversal layer (SCAD: fixed factor 1, i.e. ``grad · -1``)."""
    return GradReverse.apply(x, factor)


# ------------------------------------------------------------------------------ modules
class FeatureExtractor(nn.Module):
    """Standardize → Linear → BatchNorm → ReLU → Dropout (SCAD's ``FX``)."""

    def __init__(self, in_dim: int, h_dim: int, dropout: float) -> None:
        super().__init__()
        self.standardize = Standardize(in_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, h_dim), nn.BatchNorm1d(h_dim), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        # genes a user's cells lack are NaN: they enter as the training mean (0 after scaling)
        x = torch.where(torch.isnan(x), self.standardize.mean, x)
        return self.net(self.standardize(x))  # (B, h)


def _mlp_blocks(width: int, n: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(width, width), nn.Dropout(dropout), nn.LeakyReLU()]
    return layers


class ResponsePredictor(nn.Module):
    """SCAD's ``MTLP``: Linear(h, z) → BN → ReLU → Dropout, 3 × [Linear, Dropout, LeakyReLU],
    Linear(z, 1) → the logit of *sensitive*."""

    def __init__(self, h_dim: int, z_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(h_dim, z_dim),
            nn.BatchNorm1d(z_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            *_mlp_blocks(z_dim, 3, dropout),
            nn.Linear(z_dim, 1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).squeeze(1)  # (B,)


class DomainDiscriminator(nn.Module):
    """Gradient reversal, 3 × [Linear(h, h), Dropout, LeakyReLU], Linear(h, 1) → logit of *bulk*."""

    def __init__(self, h_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(*_mlp_blocks(h_dim, 3, dropout), nn.Linear(h_dim, 1))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(grad_reverse(h)).squeeze(1)  # (B,)


@dataclass
class DomainBatch:
    """One training step's input: a source (bulk) batch and a target (single-cell) batch."""

    source: Tensor  # (Bs, d)
    target: Tensor  # (Bt, d)

    def to(self, device) -> DomainBatch:
        return DomainBatch(self.source.to(device), self.target.to(device))

    def __len__(self) -> int:
        return int(self.source.shape[0])


class SCADNet(nn.Module):
    """Extractor + response predictor + domain discriminator.

    ``forward(tensor)`` → response logits ``(B,)``; ``forward(DomainBatch)`` → ``(Bs + Bt, 2)``:
    column 0 the response logit of the source rows (NaN for target rows: the predictor sees only
    labelled source cells, as in SCAD), column 1 every row's domain logit (source = 1).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        h_dim: int,
        z_dim: int,
        dropout: float,
        adv_weight: float,
        separate_bn: bool = False,
    ) -> None:
        super().__init__()
        self.separate_bn = separate_bn
        self.extractor = FeatureExtractor(in_dim, h_dim, dropout)
        self.predictor = ResponsePredictor(h_dim, z_dim, dropout)
        self.discriminator = DomainDiscriminator(h_dim, dropout)
        self.adv_weight = float(adv_weight)
        self.register_buffer("pos_weight", torch.ones(()))  # > 1 with balance="loss"

    def forward(self, x: Tensor | DomainBatch) -> Tensor:
        if not isinstance(x, DomainBatch):
            return self.predictor(self.extractor(x))
        if self.separate_bn:  # the original: each domain normalized by its own batch
            hs, ht = self.extractor(x.source), self.extractor(x.target)
        else:
            h = self.extractor(torch.cat([x.source, x.target]))  # one BatchNorm batch
            hs, ht = h[: len(x.source)], h[len(x.source) :]
        response = torch.cat([self.predictor(hs), torch.full_like(ht[:, 0], math.nan)])
        domain = self.discriminator(torch.cat([hs, ht]))
        return torch.stack([response, domain], dim=1)  # (Bs + Bt, 2)

    def domain_logits(self, x: Tensor) -> Tensor:
        return self.discriminator(self.extractor(x))


# ------------------------------------------------------------------------------ data module
def _cycled(rng: np.random.Generator, idx: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices from repeated permutations of ``idx``."""
    reps = -(-n // max(idx.size, 1))
    return np.concatenate([rng.permutation(idx) for _ in range(reps)])[:n]


@dataclass
class SCADData:
    """Source lines and target cells as a :class:`~scfm.tasks.base.DataModule`.

    ``rows``: ``train`` / ``val`` index source lines; ``adapt`` (unlabelled in training) and
    ``test`` (scored, when labelled) index target cells.
    """

    source_x: np.ndarray  # (n_source, d) float32
    source_y: np.ndarray  # (n_source,) float32, 1 = sensitive
    target_x: np.ndarray  # (n_target, d) float32
    target_y: np.ndarray | None  # (n_target,) float32 with NaN for unlabelled cells
    rows: dict[str, np.ndarray]
    input_kind: str = "expression"
    balance: Balance = "sampler"
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the HeadSpec

    def __post_init__(self) -> None:
        if self.source_x.shape[1] != self.target_x.shape[1]:
            raise ValueError(
                f"source features have {self.source_x.shape[1]} columns, target features "
                f"{self.target_x.shape[1]}: both domains need the same feature space"
            )
        if self.balance not in ("sampler", "loss", "none"):
            raise ValueError(f"balance must be sampler, loss or none, got {self.balance!r}")
        for key in ("train", "val", "adapt"):
            if self.rows.get(key) is None or self.rows[key].size == 0:
                raise ValueError(f"SCADData needs {key} rows")
        self.rows.setdefault("test", np.zeros(0, dtype=np.int64))

    def spec(self) -> HeadSpec:
        return HeadSpec(
            "scad",
            int(self.source_x.shape[1]),
            1,
            classes=list(CLASSES),
            extra={"input": self.input_kind, **self.extra},
        )

    def size(self, split: SplitName) -> int:
        return int(self.rows[split].size)

    def xy(self, split: SplitName) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of a split (source lines for train / val, target cells for test)."""
        rows = self.rows[split]
        if split == "test":
            if self.target_y is None:
                raise ValueError("the target cells have no labels: no test split")
            return self.target_x[rows], self.target_y[rows]
        return self.source_x[rows], self.source_y[rows]

    def batches(
        self, split: SplitName, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[Any, Tensor]]:
        """``train``: ``(DomainBatch, source labels)`` steps; other splits: ``(features,
        labels)`` in order."""
        if split == "train":
            yield from self._train_batches(batch_size, seed)
            return
        x, y = self.xy(split)
        for start in range(0, len(y), batch_size):
            yield (
                torch.from_numpy(x[start : start + batch_size]),
                torch.from_numpy(y[start : start + batch_size]),
            )

    def _train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[DomainBatch, Tensor]]:
        rng = np.random.default_rng(seed)
        src, tgt = self.rows["train"], self.rows["adapt"]
        bs = max(2, int(batch_size))  # BatchNorm needs two rows
        steps = -(-max(src.size, tgt.size) // bs)
        if self.balance == "sampler":
            y = self.source_y[src]
            counts = np.array([(y == 0).sum(), (y == 1).sum()], dtype=np.float64)
            w = 1.0 / counts[y.astype(np.int64)]
            src_idx = rng.choice(src, size=steps * bs, replace=True, p=w / w.sum())
        else:
            src_idx = _cycled(rng, src, steps * bs)
        tgt_idx = _cycled(rng, tgt, steps * bs)
        for k in range(steps):
            s, t = src_idx[k * bs : (k + 1) * bs], tgt_idx[k * bs : (k + 1) * bs]
            batch = DomainBatch(
                torch.from_numpy(self.source_x[s]), torch.from_numpy(self.target_x[t])
            )
            yield batch, torch.from_numpy(self.source_y[s])

    def feature_stats(self) -> tuple[Tensor, Tensor]:
        """Mean / SD over training source lines and adaptation target cells together."""
        x = np.concatenate(
            [self.source_x[self.rows["train"]], self.target_x[self.rows["adapt"]]]
        ).astype(np.float64)
        return torch.from_numpy(x.mean(axis=0).astype(np.float32)), torch.from_numpy(
            x.std(axis=0).astype(np.float32)
        )

    def pos_weight(self) -> float:
        y = self.source_y[self.rows["train"]]
        return float((y == 0).sum() / max((y == 1).sum(), 1))


# ------------------------------------------------------------------------------ head
@dataclass
class SCADHead:
    """Binary response head with domain adaptation; epochs and trials selected on the source
    validation AUROC (the target's labels are never seen in training or selection)."""

    task: str = "scad"
    metric: str = "val_auroc"
    mode: Literal["min", "max"] = "max"

    def default_config(self) -> dict[str, Any]:
        return {
            "h_dim": 512,
            "z_dim": 128,
            "dropout": 0.5,
            "adv_weight": 1.0,  # λ; 0 = no adaptation (a plain classifier)
            "separate_bn": False,  # True: SCAD's separate extractor passes per domain
            "batch_size": 32,
            "optimizer": "adagrad",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "max_epochs": 40,
            "patience": 10,
        }

    def search_space(self) -> dict[str, Any]:
        from ray import tune

        return {
            "lr": tune.loguniform(3e-4, 1e-2),
            "adv_weight": tune.choice([0.2, 0.6, 0.8, 1.0, 2.0, 3.0, 4.0, 5.0]),  # SCAD's grid
            "h_dim": tune.choice([512, 1024]),
            "z_dim": tune.choice([128, 256]),
            "batch_size": tune.choice([16, 32]),
        }

    def build(
        self, config: Mapping[str, Any], spec: HeadSpec, data: DataModule | None = None
    ) -> SCADNet:
        model = SCADNet(
            spec.in_dim,
            h_dim=int(config["h_dim"]),
            z_dim=int(config["z_dim"]),
            dropout=float(config["dropout"]),
            adv_weight=float(config["adv_weight"]),
            separate_bn=bool(config.get("separate_bn", False)),
        )
        if isinstance(data, SCADData):
            model.extractor.standardize.set(*data.feature_stats())
            if data.balance == "loss":
                model.pos_weight.fill_(data.pos_weight())
        return model

    def loss(self, model: nn.Module, output: Tensor, target: Tensor) -> Tensor:
        n = target.shape[0]
        loss = F.binary_cross_entropy_with_logits(
            output[:n, 0], target.float(), pos_weight=model.pos_weight
        )
        if model.adv_weight == 0:
            return loss
        domain = torch.zeros_like(output[:, 1])
        domain[:n] = 1.0
        return loss + model.adv_weight * F.binary_cross_entropy_with_logits(output[:, 1], domain)

    @torch.no_grad()
    def score(self, model, data, split, config) -> dict[str, float]:
        x, y = data.xy(split)
        keep = ~np.isnan(y)
        logits = predict_logits(model, x[keep])
        y = y[keep].astype(np.float64)
        metrics = {
            f"{split}_auroc": binary_auroc(y, logits),
            f"{split}_auprc": average_precision(y, logits),
            f"{split}_loss": float(
                F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y))
            ),
        }
        if split == "val":  # how well the discriminator still tells bulk from cells
            metrics["val_domain_auroc"] = domain_auroc(model, data)
        return metrics


# ------------------------------------------------------------------------------ prediction
def _eval_forward(model: nn.Module, x: np.ndarray, fn, batch_size: int) -> np.ndarray:
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [
        fn(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(dev)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@torch.no_grad()
def predict_logits(model: SCADNet, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Response logits (eval mode) of feature rows ``x``."""
    return _eval_forward(model, x, model, batch_size)


def predict_proba(model: SCADNet, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Predicted probability of *sensitive* per row."""
    return 1.0 / (1.0 + np.exp(-predict_logits(model, x, batch_size)))


@torch.no_grad()
def extract_features(model: SCADNet, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """The shared extractor's representation ``(n, h)`` (eval mode)."""
    return _eval_forward(model, x, model.extractor, batch_size)


@torch.no_grad()
def domain_auroc(model: SCADNet, data: SCADData) -> float:
    """AUROC of the discriminator telling validation source lines (1) from adaptation target
    cells (0): 0.5 = the domains are indistinguishable to it."""
    xs = data.source_x[data.rows["val"]]
    xt = data.target_x[data.rows["adapt"]]
    logits = _eval_forward(model, np.concatenate([xs, xt]), model.domain_logits, 2048)
    return binary_auroc(np.r_[np.ones(len(xs)), np.zeros(len(xt))], logits)


def domain_probe_auroc(
    source_features: np.ndarray, target_features: np.ndarray, *, folds: int = 3, seed: int = 0
) -> float:
    """Cross-validated AUROC of a fresh logistic regression separating source from target rows:
    how separable two representations are, independent of the trained discriminator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source_features, target_features])
    y = np.r_[np.ones(len(source_features)), np.zeros(len(target_features))]
    scores = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        scaler = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=0.1, max_iter=500, class_weight="balanced")
        clf.fit(scaler.transform(x[tr]), y[tr])
        scores[te] = clf.decision_function(scaler.transform(x[te]))
    return binary_auroc(y, scores)
