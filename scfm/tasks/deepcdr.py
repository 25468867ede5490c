"""The DeepCDR head: drug graph (GCN) + cell-line representation → ln(IC50).

    drug SMILES ─RDKit─► graph (75 atom features) ─► GCN 256-256-256-100 (ReLU, BN, dropout)
                                                        └─ mean over the drug's atoms ─► (B, 100)
    cell line ─► expression (the original branch)  ┐
              └► frozen scfm embedding (bulk mode) ┴─► standardize ─► Linear 256, tanh, BN,
                                                        dropout ─► Linear 100, ReLU ─► (B, 100)
    concat (B, 200) ─► fusion ─► ln(IC50)

Fusion ``deepcdr`` is the original: Linear 300 + tanh + dropout, then three 1-D convolutions with
max pooling (30×150, 10×5, 5×5) and Linear 30 → 1. Fusion ``mlp`` (Linear → ReLU → dropout →
Linear) is smaller and about 10× cheaper per pair; both are in the search space.

Deviations from the Keras original (all deliberate): the GCN pools over real atoms only (the
original averaged over 100 zero-padded nodes that also passed through bias and BN); the cell
input is standardized with training cell lines' statistics; the network predicts the
standardized target (training mean / SD kept as buffers) and the loss is MSE on that scale; AdamW
with the framework's early stopping on a validation part carved from training (the original
stopped on the test set).

Efficiency: drug graphs are featurized once (:class:`~scfm.tasks.drug_graph.DrugGraphs`); a
training step packs the graphs of the distinct drugs of the batch, runs the GCN once per drug and
indexes the embeddings by pair. Cell-line features (expression rows or scfm embeddings) are
computed once per cell line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.tasks.base import DataModule, HeadSpec, SplitName, autocast
from scfm.tasks.drug_data import (
    DEFAULT_ZSCORE_SCALE,
    DrugResponseData,
    PairSplit,
    embed_expression,
    feature_matrix,
)
from scfm.tasks.drug_graph import N_ATOM_FEATURES, DrugGraphs, PackedGraphs
from scfm.tasks.regression import regression_metrics

logger = logging.getLogger(__name__)

CellInput = Literal["expression", "scfm"]
DEFAULT_POOL: tuple[str, ...] = ("max_all",)  # the scFoundation DeepCDR run: max over all tokens


# ------------------------------------------------------------------------------ data module
@dataclass
class PairBatch:
    """Model input of a batch of (cell line, drug) pairs."""

    cell_x: Tensor  # (B, d) cell-line features
    drug_pos: Tensor  # (B,) position of each pair's drug in ``graphs``
    graphs: PackedGraphs  # the distinct drugs of the batch

    def to(self, device) -> PairBatch:
        return PairBatch(self.cell_x.to(device), self.drug_pos.to(device), self.graphs.to(device))

    def __len__(self) -> int:
        return int(self.drug_pos.shape[0])


@dataclass
class DeepCDRData:
    """Pairs of one split as a :class:`~scfm.tasks.base.DataModule` for :class:`DeepCDRHead`.

    ``rows`` maps ``train`` (training pairs minus validation), ``val`` and ``test`` to pair indices.
    """

    cell_features: np.ndarray  # (n_cell_lines, d) float32
    graphs: DrugGraphs
    cell: np.ndarray  # (n_pairs,) int64
    drug: np.ndarray  # (n_pairs,) int64
    y: np.ndarray  # (n_pairs,) float32 ln(IC50)
    rows: dict[str, np.ndarray]
    cell_input: str = "expression"

    @classmethod
    def from_split(
        cls,
        data: DrugResponseData,
        split: PairSplit,
        cell_features: np.ndarray,
        cell_input: str = "expression",
    ) -> DeepCDRData:
        if cell_features.shape[0] != len(data.cell_lines):
            raise ValueError(
                f"{cell_features.shape[0]} cell-line feature rows for {len(data.cell_lines)} "
                "cell lines"
            )
        return cls(
            np.ascontiguousarray(cell_features, dtype=np.float32),
            data.graphs,
            data.cell.astype(np.int64),
            data.drug.astype(np.int64),
            data.y.astype(np.float32),
            {"train": split.train_only, "val": split.val, "test": split.test},
            cell_input,
        )

    def spec(self) -> HeadSpec:
        return HeadSpec(
            "deepcdr",
            int(self.cell_features.shape[1]),
            1,
            extra={"cell_input": self.cell_input, "atom_features": N_ATOM_FEATURES},
        )

    def size(self, split: SplitName) -> int:
        return int(self.rows[split].size)

    def batch(self, idx: np.ndarray) -> PairBatch:
        drugs, pos = np.unique(self.drug[idx], return_inverse=True)
        return PairBatch(
            torch.from_numpy(self.cell_features[self.cell[idx]]),
            torch.from_numpy(pos.astype(np.int64)),
            self.graphs.subset(drugs),
        )

    def batches(
        self, split: SplitName, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[PairBatch, Tensor]]:
        rows = self.rows[split]
        if shuffle:
            rows = rows[np.random.default_rng(seed).permutation(rows.size)]
        starts = list(range(0, rows.size, batch_size))
        if len(starts) > 1 and rows.size - starts[-1] < 2:
            starts.pop()  # no batch of one pair: BatchNorm needs two in training
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else rows.size
            idx = rows[start:stop]
            yield self.batch(idx), torch.from_numpy(self.y[idx])

    def feature_stats(self) -> tuple[Tensor, Tensor]:
        """Mean / SD of the features of the training cell lines (each line counted once)."""
        x = self.cell_features[np.unique(self.cell[self.rows["train"]])]
        return torch.from_numpy(x.mean(axis=0)), torch.from_numpy(x.std(axis=0))

    def target_stats(self) -> tuple[float, float]:
        y = self.y[self.rows["train"]]
        return float(y.mean()), float(max(y.std(), 1e-6))


# ------------------------------------------------------------------------------ modules
class GraphConv(nn.Module):
    """DeepCDR's ``GraphConv``: ``H' = Â (H W + b)`` with the normalized adjacency ``Â``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor, g: PackedGraphs) -> Tensor:
        h = self.linear(x)  # (N, out)
        msg = h[g.src] * g.weight.unsqueeze(1).to(h.dtype)  # (E, out)
        return torch.zeros_like(h).index_add_(0, g.dst, msg)


class DrugGCN(nn.Module):
    """GraphConv → ReLU → BatchNorm → Dropout per layer, then the mean over each drug's atoms."""

    def __init__(self, dims: Sequence[int], dropout: float) -> None:
        super().__init__()
        widths = [N_ATOM_FEATURES, *dims]
        self.convs = nn.ModuleList(
            GraphConv(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:])
        self.dropout = nn.Dropout(dropout)
        self.out_dim = widths[-1]

    def forward(self, g: PackedGraphs) -> Tensor:
        h = g.x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = self.dropout(norm(F.relu(conv(h, g))))  # (N, width)
        sums = torch.zeros(g.n_graphs, h.shape[1], dtype=h.dtype, device=h.device)
        sums.index_add_(0, g.graph, h)
        counts = torch.bincount(g.graph, minlength=g.n_graphs).clamp(min=1).to(h.dtype)
        return sums / counts.unsqueeze(1)  # (D, out)


class Standardize(nn.Module):
    """``(x - mean) / std`` with training statistics stored as buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class CellMLP(nn.Module):
    """The DeepCDR expression branch: Linear → tanh → BN → Dropout → Linear → ReLU."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.standardize = Standardize(in_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.Tanh(),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.standardize(x.float()))


class ConvFusion(nn.Module):
    """The original DeepCDR fusion: Linear 300 + tanh, three Conv1d + max-pool blocks, Linear."""

    def __init__(self, in_dim: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, 300)
        self.convs = nn.Sequential(
            nn.Conv1d(1, 30, 150),  # 300 → 151
            nn.ReLU(),
            nn.MaxPool1d(2),  # → 75
            nn.Conv1d(30, 10, 5),  # → 71
            nn.ReLU(),
            nn.MaxPool1d(3),  # → 23
            nn.Conv1d(10, 5, 5),  # → 19
            nn.ReLU(),
            nn.MaxPool1d(3),  # → 6
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(30, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(torch.tanh(self.dense(x))).unsqueeze(1)  # (B, 1, 300)
        h = self.dropout(self.convs(h)).flatten(1)  # (B, 30)
        return self.out(F.dropout(h, 0.2, self.training)).squeeze(1)


class MLPFusion(nn.Module):
    """A small fusion: Linear → ReLU → Dropout → Linear."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class DeepCDRNet(nn.Module):
    """Drug GCN + cell MLP + fusion; outputs ln(IC50) (de-standardized)."""

    def __init__(
        self,
        cell_dim: int,
        *,
        gcn_width: int = 256,
        gcn_layers: int = 3,
        drug_dim: int = 100,
        cell_hidden: int = 256,
        cell_out: int = 100,
        fusion: str = "deepcdr",
        fusion_hidden: int = 300,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if fusion not in ("deepcdr", "mlp"):
            raise ValueError(f"fusion must be 'deepcdr' or 'mlp', got {fusion!r}")
        self.drug = DrugGCN([gcn_width] * gcn_layers + [drug_dim], dropout)
        self.cell = CellMLP(cell_dim, cell_hidden, cell_out, dropout)
        fused = drug_dim + cell_out
        self.fusion = (
            ConvFusion(fused, dropout)
            if fusion == "deepcdr"
            else MLPFusion(fused, fusion_hidden, dropout)
        )
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def forward(self, batch: PairBatch) -> Tensor:
        drug_emb = self.drug(batch.graphs)[batch.drug_pos]  # (B, drug_dim): one GCN pass per drug
        z = torch.cat([drug_emb, self.cell(batch.cell_x)], dim=1)  # (B, drug_dim + cell_out)
        return self.fusion(z) * self.y_std + self.y_mean  # (B,)


# ------------------------------------------------------------------------------ head
@dataclass
class DeepCDRHead:
    """Regression head on (cell line, drug) pairs; selects epochs and trials on validation RMSE."""

    task: str = "deepcdr"
    metric: str = "val_rmse"
    mode: Literal["min", "max"] = "min"

    def default_config(self) -> dict[str, Any]:
        return {
            "gcn_width": 256,
            "gcn_layers": 3,
            "drug_dim": 100,
            "cell_hidden": 256,
            "cell_out": 100,
            "fusion": "deepcdr",
            "fusion_hidden": 300,
            "dropout": 0.1,
            "batch_size": 256,
            "weight_decay": 0.0,
            "patience": 5,
        }

    def search_space(self) -> dict[str, Any]:
        from ray import tune

        return {
            "lr": tune.loguniform(1e-4, 3e-3),
            "weight_decay": tune.loguniform(1e-7, 1e-3),
            "gcn_width": tune.choice([128, 256]),
            "cell_hidden": tune.choice([128, 256, 512]),
            "fusion": tune.choice(["deepcdr", "mlp"]),
            "fusion_hidden": tune.choice([128, 300]),
            "dropout": tune.uniform(0.0, 0.4),
            "batch_size": tune.choice([128, 256, 512]),
        }

    def build(
        self, config: Mapping[str, Any], spec: HeadSpec, data: DataModule | None = None
    ) -> DeepCDRNet:
        model = DeepCDRNet(
            spec.in_dim,
            gcn_width=int(config["gcn_width"]),
            gcn_layers=int(config["gcn_layers"]),
            drug_dim=int(config["drug_dim"]),
            cell_hidden=int(config["cell_hidden"]),
            cell_out=int(config["cell_out"]),
            fusion=str(config["fusion"]),
            fusion_hidden=int(config["fusion_hidden"]),
            dropout=float(config["dropout"]),
        )
        if data is not None:
            model.cell.standardize.set(*data.feature_stats())
            mean, std = data.target_stats()
            model.y_mean.fill_(mean)
            model.y_std.fill_(std)
        return model

    def loss(self, model: nn.Module, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target) / model.y_std**2  # MSE of the standardized target

    @torch.no_grad()
    def score(self, model, data, split, config) -> dict[str, float]:
        pred, y = predict_pairs(model, data, split, int(config.get("batch_size", 256)))
        m = regression_metrics(y, pred)
        std = float(model.y_std)
        return {
            f"{split}_loss": float(np.mean((pred - y) ** 2)) / std**2,
            f"{split}_rmse": m.rmse,
            f"{split}_pearson": m.pearson,
            f"{split}_spearman": m.spearman,
        }


@torch.no_grad()
def predict_pairs(
    model: nn.Module, data: DeepCDRData, split: SplitName, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true ln(IC50) of a split's pairs, in row order."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds, ys = [], []
    for batch, y in data.batches(split, max(batch_size, 1024)):
        with autocast(dev):
            preds.append(model(batch.to(dev)).float().cpu())
        ys.append(y)
    model.train(was_training)
    if not preds:
        return np.zeros(0), np.zeros(0)
    return torch.cat(preds).numpy().astype(np.float64), torch.cat(ys).numpy().astype(np.float64)


# ------------------------------------------------------------------------------ cell features
def expression_features(data: DrugResponseData) -> np.ndarray:
    """The original DeepCDR branch's input: expression rows (z-scores, or log-normalized bulk)."""
    return feature_matrix(data.expression)


def scfm_features(
    data: DrugResponseData,
    backbone,
    *,
    pool: Sequence[str] = DEFAULT_POOL,
    zscore_scale: float = DEFAULT_ZSCORE_SCALE,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """Frozen scfm embeddings of every cell line (``pre_normalized="bulk"``), and the seconds.

    ``backbone`` is a :class:`~scfm.tasks.models.Backbone` or an XTrimoGene.
    """
    return embed_expression(
        data.expression,
        backbone,
        pool=pool,
        zscore_scale=zscore_scale,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
