"""GEARS (Roohani, Huang & Leskovec 2023) as an scfm head: predict expression after perturbation.

The architecture of ``gears/model.py`` (``GEARS_Model``), in plain torch:

    gene features ─ Linear ─ BN ─ ReLU ──────────────┐   learned (original GEARS), or the scfm
    learned position embedding ─ SGConv × L over the  ├─ + 0.2 · ─ MLP ─► gene embeddings (G, h)
    co-expression graph ──────────────────────────────┘        │
    learned perturbation embedding ─ SGConv × L' over          │  + MLP(Σ embeddings of the
    the gene-set graph ─► perturbation embeddings (P, h) ──────┘    cell's perturbed genes)
                                                               ▼
         BN ─ ReLU ─ MLP[h, 2h, h] ─ per-gene Linear(h → 1) ─► (G,) ─ cross-gene MLP[G, h, h] ─┐
         concat [per-gene value, cross-gene state] ─ per-gene Linear(h+1 → 1) ─ + control cell ◄┘

**Gene features.** ``learned``: an ``nn.Embedding`` per gene (original GEARS). ``scfm``: the
scFoundation change — the genes' context embeddings from a pretrained decoder. Here they are the
mean decoder state of each gene over (up to ``max_cells``) control cells, computed once
(:func:`scfm_gene_features`), standardized per dimension and projected to the hidden width;
genes outside the 19,264-gene vocabulary get a learned vector instead. (The paper recomputes a
frozen model's per-cell embeddings of the paired control cell in every forward pass.)

**Loss** (``loss_fct`` of GEARS, γ = 2, λ = 0.1): for each perturbation in the batch, over the
genes with a nonzero mean in that condition (all genes for the control),
``mean |ŷ − y|^(2+γ) + λ · mean (s(y − c) − s(ŷ − c))²`` with ``c`` the control mean, averaged
over the batch's perturbations. GEARS uses ``s = torch.sign``, whose gradient is zero, so its
direction term never trains anything (GEARS issues #36, #52, #86); here ``s(d) = tanh(d / τ)``
(τ = 0.1), which has a gradient and tends to ``sign`` as τ → 0.

**Batches.** Each cell is paired with one random control cell (fixed per data module, as GEARS
caches it); control cells are paired with themselves. The perturbation-dependent part is computed
once per distinct perturbation in a batch (its BatchNorm statistics are over distinct
perturbations, not over duplicated cells) and added to each cell's control expression.

**Evaluation** compares pseudobulk means: the prediction for a perturbation is its effect plus the
control mean (the expectation over paired control cells).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from scfm.tasks.base import DataModule, HeadSpec, SplitName
from scfm.tasks.perturb_data import PerturbData, PerturbSplit
from scfm.tasks.perturb_graphs import GeneGraph, coexpression_graph
from scfm.tasks.perturb_metrics import mean_metrics, perturbation_metrics

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ gene features
@dataclass
class GeneFeatures:
    """Fixed per-gene input features of the GEARS gene embedding.

    Attributes
    ----------
    values
        ``(n_rows, D)`` float32 feature rows (standardized per dimension).
    index
        ``(n_genes,)`` row of each expression gene; -1 = no feature (a learned vector).
    label
        Where the features came from, for tables.
    """

    values: np.ndarray
    index: np.ndarray
    label: str

    @property
    def n_missing(self) -> int:
        return int((self.index < 0).sum())


def scfm_gene_features(
    data: PerturbData,
    model,
    *,
    label: str = "scfm",
    max_cells: int = 200,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
) -> GeneFeatures:
    """Mean decoder state of every vocabulary gene of ``data`` over its control cells.

    Parameters
    ----------
    model
        An ``XTrimoGene`` or a model spec (:func:`scfm.inference.load_model`).
    max_cells
        Average over at most this many control cells (a seeded subset).
    """
    import anndata as ad
    import pandas as pd

    from scfm.data.genes import GeneVocab
    from scfm.inference import gene_embeddings

    rows = np.flatnonzero(data.cell_condition == 0)
    if rows.size > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    vocab = GeneVocab.load()
    names = sorted({vocab.names[i] for i in data.vocab_index if i >= 0})
    if not names:
        raise ValueError("no gene of the data is in the vocabulary: scfm features impossible")
    adata = ad.AnnData(
        X=data.counts[rows],
        obs=pd.DataFrame(index=pd.Index([f"ctrl_{i}" for i in rows])),
        var=pd.DataFrame(index=pd.Index(data.genes)),
    )
    emb = gene_embeddings(
        adata,
        model,
        genes=names,
        aggregate="mean",
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    pos = {g: i for i, g in enumerate(emb.genes)}
    index = np.array([pos[vocab.names[i]] if i >= 0 else -1 for i in data.vocab_index], np.int64)
    values = emb.values.astype(np.float64)
    values = (values - values.mean(axis=0)) / np.maximum(values.std(axis=0), 1e-6)
    return GeneFeatures(values.astype(np.float32), index, label)


# ------------------------------------------------------------------------------ data module
def gcn_normalize(
    src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GCN normalization as torch-geometric's ``gcn_norm`` (``SGConv``): self loops of weight 1
    added where missing, then ``w_ij / sqrt(deg_i · deg_j)`` with in-degrees (targets)."""
    has_loop = np.zeros(n, dtype=bool)
    has_loop[src[src == dst]] = True
    loops = np.flatnonzero(~has_loop)
    src = np.concatenate([src, loops]).astype(np.int64)
    dst = np.concatenate([dst, loops]).astype(np.int64)
    w = np.concatenate([weight, np.ones(loops.size)]).astype(np.float64)
    deg = np.bincount(dst, weights=w, minlength=n)
    dis = np.divide(1.0, np.sqrt(deg), out=np.zeros(n), where=deg > 0)
    return src, dst, (dis[src] * w * dis[dst]).astype(np.float32)


@dataclass
class PerturbBatch:
    """Model input: paired control expression and the batch's distinct perturbations."""

    x: Tensor  # (B, G) expression of each cell's paired control cell
    perts: Tensor  # (U, M) perturbation-graph nodes of each distinct perturbation, -1 padded
    inverse: Tensor  # (B,) which distinct perturbation each cell has

    def to(self, device) -> PerturbBatch:
        return PerturbBatch(self.x.to(device), self.perts.to(device), self.inverse.to(device))


@dataclass
class PerturbTarget:
    """Loss target: observed expression, perturbation group and the genes the loss sees."""

    y: Tensor  # (B, G)
    group: Tensor  # (B,) distinct-perturbation index
    mask: Tensor  # (B, G) bool: genes with a nonzero mean in the cell's condition

    def to(self, device) -> PerturbTarget:
        return PerturbTarget(self.y.to(device), self.group.to(device), self.mask.to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class GearsData:
    """Cells of one perturbation split, the two graphs and the gene features (a DataModule).

    ``rows`` are cells: training = control cells + cells of training perturbations; ``val`` /
    ``test`` = cells of those perturbations. ``conditions`` are the split's condition indices.
    """

    expr: sp.csr_matrix
    cell_condition: np.ndarray
    pair: np.ndarray
    cond_nodes: np.ndarray
    nonzero: np.ndarray
    means: np.ndarray
    de_idx: np.ndarray
    rows: dict[str, np.ndarray]
    conditions: dict[str, np.ndarray]
    condition_names: list[str]
    genes: list[str]
    coexpr: GeneGraph
    pert_graph: GeneGraph
    features: GeneFeatures | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        data: PerturbData,
        split: PerturbSplit,
        pert_graph: GeneGraph,
        features: GeneFeatures | None = None,
        *,
        coexpr_k: int = 20,
        coexpr_threshold: float = 0.4,
        max_cells_per_condition: int | None = None,
        seed: int = 0,
    ) -> GearsData:
        """Cells, graphs and pairing for ``split`` (co-expression from its training cells).

        Parameters
        ----------
        max_cells_per_condition
            Train on at most this many cells per condition (seeded; None = all, as GEARS).
        """
        rng = np.random.default_rng(seed)
        cc = data.cell_condition
        idx = {name: data.index(getattr(split, name)) for name in ("train", "val", "test")}
        train_rows = np.flatnonzero(np.isin(cc, np.concatenate([[0], idx["train"]])))
        if max_cells_per_condition is not None:
            train_rows = _cap_per_condition(train_rows, cc, max_cells_per_condition, rng)
        rows = {
            "train": train_rows,
            "val": np.flatnonzero(np.isin(cc, idx["val"])),
            "test": np.flatnonzero(np.isin(cc, idx["test"])),
        }
        singles = [c for c in idx["train"] if len(data.condition_genes[c]) == 1]
        co_rows = np.flatnonzero(np.isin(cc, np.concatenate([[0], singles])))
        coexpr = coexpression_graph(
            data.expr[co_rows], list(data.genes), k=coexpr_k, threshold=coexpr_threshold
        )
        node = {k: i for i, k in enumerate(pert_graph.nodes)}
        missing = sorted({k for keys in data.condition_keys for k in keys if k not in node})
        if missing:
            raise ValueError(
                f"perturbed genes not in the perturbation graph: {', '.join(missing[:10])}; "
                "load the data with graph_genes= so they are refused or dropped first"
            )
        width = max(1, max(len(k) for k in data.condition_keys))
        cond_nodes = np.full((len(data.conditions), width), -1, dtype=np.int64)
        for i, keys in enumerate(data.condition_keys):
            cond_nodes[i, : len(keys)] = [node[k] for k in keys]
        ctrl = np.flatnonzero(cc == 0)
        pair = ctrl[rng.integers(ctrl.size, size=cc.size)]
        pair[ctrl] = ctrl
        return cls(
            expr=data.expr,
            cell_condition=cc,
            pair=pair,
            cond_nodes=cond_nodes,
            nonzero=data.nonzero,
            means=data.means.astype(np.float32),
            de_idx=data.de_idx,
            rows=rows,
            conditions=idx,
            condition_names=list(data.conditions),
            genes=[str(g) for g in data.genes],
            coexpr=coexpr,
            pert_graph=pert_graph,
            features=features,
            info={"split_seed": split.seed},
        )

    # DataModule protocol ------------------------------------------------------------------
    def size(self, split: SplitName) -> int:
        return int(self.rows[split].size)

    def spec(self) -> HeadSpec:
        f = self.features
        return HeadSpec(
            task="gears",
            in_dim=0 if f is None else int(f.values.shape[1]),
            n_outputs=len(self.genes),
            extra={
                "genes": self.genes,
                "pert_nodes": list(self.pert_graph.nodes),
                "max_genes_per_perturbation": int(self.cond_nodes.shape[1]),
                "n_coexpr_edges": int(self.normalized("coexpr")[0].size),
                "n_pert_edges": int(self.normalized("pert")[0].size),
                "embedding": "learned" if f is None else "features",
                "features": "" if f is None else f.label,
                "n_feature_rows": 0 if f is None else int(f.values.shape[0]),
                "n_genes_without_feature": 0 if f is None else f.n_missing,
            },
        )

    def batches(
        self, split: SplitName, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[PerturbBatch, PerturbTarget]]:
        rows = self.rows[split]
        if shuffle:
            rows = rows[np.random.default_rng(seed).permutation(rows.size)]
        for start in range(0, rows.size, batch_size):
            idx = rows[start : start + batch_size]
            cond = self.cell_condition[idx]
            uniq, inverse = np.unique(cond, return_inverse=True)
            inv = torch.from_numpy(inverse.astype(np.int64))
            batch = PerturbBatch(
                x=torch.from_numpy(self.expr[self.pair[idx]].toarray()),
                perts=torch.from_numpy(self.cond_nodes[uniq]),
                inverse=inv,
            )
            target = PerturbTarget(
                y=torch.from_numpy(self.expr[idx].toarray()),
                group=inv,
                mask=torch.from_numpy(self.nonzero[cond]),
            )
            yield batch, target

    # graphs -------------------------------------------------------------------------------
    def normalized(self, which: Literal["coexpr", "pert"]) -> tuple[np.ndarray, ...]:
        g = self.coexpr if which == "coexpr" else self.pert_graph
        return gcn_normalize(g.src, g.dst, g.weight, len(g.nodes))


def _cap_per_condition(
    rows: np.ndarray, cc: np.ndarray, cap: int, rng: np.random.Generator
) -> np.ndarray:
    keep = []
    for c in np.unique(cc[rows]):
        r = rows[cc[rows] == c]
        keep.append(r if r.size <= cap else rng.choice(r, cap, replace=False))
    return np.sort(np.concatenate(keep))


# ------------------------------------------------------------------------------------ model
def mlp(sizes: list[int]) -> nn.Sequential:
    """GEARS' ``MLP``: [Linear, BatchNorm1d, ReLU] per layer, the last ReLU removed."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _batchnorm_rows(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a BatchNorm-containing module; a single row is duplicated in training (as GEARS)."""
    if module.training and x.shape[0] == 1:
        return module(x.repeat(2, 1))[:1]
    return module(x)


class SGConv(nn.Module):
    """One-hop simplified graph convolution: ``Linear(Â x)`` with a GCN-normalized ``Â``
    (torch-geometric ``SGConv(K=1)``; the normalized edges are precomputed)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor, src: Tensor, dst: Tensor, norm: Tensor) -> Tensor:
        msg = x[src] * norm.unsqueeze(-1)  # (E, h)
        return self.lin(torch.zeros_like(x).index_add_(0, dst, msg))


class GEARSModel(nn.Module):
    """The GEARS network (see the module docstring); graphs and features are buffers."""

    def __init__(
        self,
        n_genes: int,
        n_pert_nodes: int,
        hidden: int = 64,
        gene_layers: int = 1,
        pert_layers: int = 1,
        *,
        n_coexpr_edges: int,
        n_pert_edges: int,
        feature_dim: int = 0,
        n_feature_rows: int = 0,
        n_genes_without_feature: int = 0,
    ) -> None:
        super().__init__()
        G, h = n_genes, hidden
        self.n_genes = G
        if feature_dim == 0:
            self.gene_emb = nn.Embedding(G, h, max_norm=True)
        else:
            self.register_buffer("features", torch.zeros(n_feature_rows, feature_dim))
            self.register_buffer("feature_index", torch.zeros(G, dtype=torch.long))
            self.missing_features = nn.Parameter(
                torch.randn(n_genes_without_feature, feature_dim) * 0.1
            )
            self.feature_proj = nn.Linear(feature_dim, h)
        self.bn_emb = nn.BatchNorm1d(h)
        self.emb_pos = nn.Embedding(G, h, max_norm=True)
        self.coexpr_layers = nn.ModuleList(SGConv(h, h) for _ in range(gene_layers))
        self.emb_trans_v2 = mlp([h, h, h])
        self.pert_emb = nn.Embedding(n_pert_nodes, h, max_norm=True)
        self.pert_layers = nn.ModuleList(SGConv(h, h) for _ in range(pert_layers))
        self.pert_fuse = mlp([h, h, h])
        self.bn_pert_base = nn.BatchNorm1d(h)
        self.recovery_w = mlp([h, 2 * h, h])
        self.indv_w1 = nn.Parameter(torch.empty(G, h))
        self.indv_b1 = nn.Parameter(torch.empty(G, 1))
        self.cross_gene_state = mlp([G, h, h])
        self.indv_w2 = nn.Parameter(torch.empty(1, G, h + 1))
        self.indv_b2 = nn.Parameter(torch.empty(1, G))
        for p, shape in (
            (self.indv_w1, (G, h, 1)),
            (self.indv_b1, (G, 1)),
            (self.indv_w2, (1, G, h + 1)),
            (self.indv_b2, (1, G)),
        ):
            with torch.no_grad():  # xavier_normal_ on GEARS' parameter shapes
                p.copy_(nn.init.xavier_normal_(torch.empty(shape)).reshape(p.shape))
        for name, n in (("coexpr", n_coexpr_edges), ("pert", n_pert_edges)):
            self.register_buffer(f"{name}_src", torch.zeros(n, dtype=torch.long))
            self.register_buffer(f"{name}_dst", torch.zeros(n, dtype=torch.long))
            self.register_buffer(f"{name}_norm", torch.zeros(n))
        self.register_buffer("ctrl_mean", torch.zeros(G))
        self.loss_options: dict[str, float] = {}  # set by GearsHead.build

    def set_data(self, data: GearsData) -> None:
        """Copy the graphs, features and control mean of ``data`` into the buffers."""
        with torch.no_grad():
            for name in ("coexpr", "pert"):
                src, dst, norm = data.normalized(name)  # type: ignore[arg-type]
                getattr(self, f"{name}_src").copy_(torch.from_numpy(src))
                getattr(self, f"{name}_dst").copy_(torch.from_numpy(dst))
                getattr(self, f"{name}_norm").copy_(torch.from_numpy(norm))
            self.ctrl_mean.copy_(torch.from_numpy(data.means[0]))
            if data.features is not None:
                f = data.features
                self.features.copy_(torch.from_numpy(f.values))
                missing = np.cumsum(f.index < 0) - 1 + f.values.shape[0]
                self.feature_index.copy_(torch.from_numpy(np.where(f.index >= 0, f.index, missing)))

    def gene_embeddings(self) -> Tensor:
        """``(G, h)`` gene embeddings after the co-expression GNN (the same for every cell)."""
        ids = torch.arange(self.n_genes, device=self.ctrl_mean.device)
        if hasattr(self, "gene_emb"):
            emb = self.gene_emb(ids)
        else:
            table = torch.cat([self.features, self.missing_features], dim=0)
            emb = self.feature_proj(table[self.feature_index])
        base = torch.relu(self.bn_emb(emb))
        pos = self.emb_pos(ids)
        for i, layer in enumerate(self.coexpr_layers):
            pos = layer(pos, self.coexpr_src, self.coexpr_dst, self.coexpr_norm)
            if i < len(self.coexpr_layers) - 1:
                pos = torch.relu(pos)
        return self.emb_trans_v2(base + 0.2 * pos)

    def perturbation_embeddings(self) -> Tensor:
        """``(P, h)`` embeddings of the perturbation-graph nodes after the gene-set GNN."""
        ids = torch.arange(self.pert_emb.num_embeddings, device=self.ctrl_mean.device)
        emb = self.pert_emb(ids)
        for i, layer in enumerate(self.pert_layers):
            emb = layer(emb, self.pert_src, self.pert_dst, self.pert_norm)
            if i < len(self.pert_layers) - 1:
                emb = torch.relu(emb)
        return emb

    def effect(self, perts: Tensor) -> Tensor:
        """``(U, G)`` change from the paired control for ``U`` perturbations (``(U, M)`` nodes,
        -1 padded; a row of -1 is the control)."""
        U, G = perts.shape[0], self.n_genes
        base = self.gene_embeddings()
        h = base.shape[1]
        pert_emb = self.perturbation_embeddings()
        valid = perts >= 0
        summed = (pert_emb[perts.clamp(min=0)] * valid.unsqueeze(-1)).sum(dim=1)  # (U, h)
        has = valid.any(dim=1)
        add = torch.zeros(U, h, device=base.device, dtype=base.dtype)
        if has.any():  # GEARS adds nothing to control cells
            add[has] = _batchnorm_rows(self.pert_fuse, summed[has]).to(add.dtype)
        emb = (base.unsqueeze(0) + add.unsqueeze(1)).reshape(U * G, h)
        emb = torch.relu(self.bn_pert_base(emb))
        out = self.recovery_w(emb).reshape(U, G, h)
        out = (out * self.indv_w1).sum(dim=-1) + self.indv_b1.squeeze(-1)  # (U, G)
        cross = _batchnorm_rows(self.cross_gene_state, out)  # (U, h)
        joint = torch.cat([out.unsqueeze(-1), cross.unsqueeze(1).expand(U, G, h)], dim=-1)
        return (joint * self.indv_w2).sum(dim=-1) + self.indv_b2  # (U, G)

    def forward(self, batch: PerturbBatch) -> Tensor:
        """``(B, G)`` predicted expression of each cell: effect + its paired control cell."""
        return self.effect(batch.perts)[batch.inverse] + batch.x


# ------------------------------------------------------------------------------------- loss
def soft_sign(x: Tensor, tau: float) -> Tensor:
    """``tanh(x / τ)``: a sign with a gradient (``sign`` as τ → 0)."""
    return torch.tanh(x / tau)


def gears_loss(
    pred: Tensor,
    target: PerturbTarget,
    ctrl: Tensor,
    *,
    gamma: float = 2.0,
    direction_lambda: float = 0.1,
    tau: float = 0.1,
) -> Tensor:
    """GEARS' autofocus + direction loss (module docstring), averaged over the perturbations."""
    m = target.mask.to(pred.dtype)
    n_genes = m.sum(dim=1).clamp(min=1)
    focal = ((pred - target.y).abs().pow(2 + gamma) * m).sum(dim=1) / n_genes
    direction = (soft_sign(target.y - ctrl, tau) - soft_sign(pred - ctrl, tau)).pow(2)
    per_cell = focal + direction_lambda * (direction * m).sum(dim=1) / n_genes
    n_groups = int(target.group.max()) + 1
    sums = torch.zeros(n_groups, device=pred.device, dtype=pred.dtype)
    sums = sums.index_add(0, target.group, per_cell)
    counts = torch.bincount(target.group, minlength=n_groups).to(pred.dtype)
    return (sums / counts.clamp(min=1))[counts > 0].mean()


# ------------------------------------------------------------------------------------- head
@torch.no_grad()
def predict_means(model: GEARSModel, perts: np.ndarray, batch: int = 64) -> np.ndarray:
    """Predicted mean expression ``(n, G)`` (effect + control mean) of perturbations given by
    their ``(n, M)`` graph nodes."""
    was_training = model.training
    model.eval()
    dev = model.ctrl_mean.device
    out = []
    for start in range(0, len(perts), batch):
        p = torch.as_tensor(perts[start : start + batch], device=dev)
        out.append((model.effect(p) + model.ctrl_mean).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, model.n_genes))


@dataclass
class GearsHead:
    """GEARS as a :class:`~scfm.tasks.base.Head`: epochs and trials selected on validation
    top-20-DE MSE (as GEARS selects its best epoch)."""

    task: str = "gears"
    metric: str = "val_mse_de"
    mode: Literal["min", "max"] = "min"

    def default_config(self) -> dict[str, Any]:
        return {
            "hidden": 64,
            "gene_layers": 1,
            "pert_layers": 1,
            "gamma": 2.0,
            "direction_lambda": 0.1,
            "direction_tau": 0.1,
            "lr": 1e-3,
            "weight_decay": 5e-4,
            "batch_size": 32,
            "max_epochs": 20,
            "patience": 5,
        }

    def search_space(self) -> dict[str, Any]:
        from ray import tune

        return {
            "lr": tune.loguniform(1e-4, 1e-2),
            "hidden": tune.choice([32, 64, 128]),
            "gene_layers": tune.choice([1, 2]),
            "pert_layers": tune.choice([1, 2]),
        }

    def build(
        self, config: Mapping[str, Any], spec: HeadSpec, data: DataModule | None = None
    ) -> GEARSModel:
        x = spec.extra
        model = GEARSModel(
            spec.n_outputs,
            len(x["pert_nodes"]),
            int(config["hidden"]),
            int(config["gene_layers"]),
            int(config["pert_layers"]),
            n_coexpr_edges=int(x["n_coexpr_edges"]),
            n_pert_edges=int(x["n_pert_edges"]),
            feature_dim=int(spec.in_dim),
            n_feature_rows=int(x["n_feature_rows"]),
            n_genes_without_feature=int(x["n_genes_without_feature"]),
        )
        model.loss_options = {
            "gamma": float(config["gamma"]),
            "direction_lambda": float(config["direction_lambda"]),
            "tau": float(config["direction_tau"]),
        }
        if data is not None:
            model.set_data(data)  # type: ignore[arg-type]
        return model

    def loss(self, model: nn.Module, output: Tensor, target: PerturbTarget) -> Tensor:
        return gears_loss(output, target, model.ctrl_mean, **model.loss_options)

    def score(
        self, model: nn.Module, data: GearsData, split: SplitName, config: Mapping[str, Any]
    ) -> dict[str, float]:
        scores = evaluate_split(model, data, split)  # type: ignore[arg-type]
        return {f"{split}_{k}": v for k, v in mean_metrics(scores).items()}


def evaluate_split(model: GEARSModel, data: GearsData, split: SplitName):
    """Per-perturbation metrics of a split (pseudobulk predictions vs observed means)."""
    conds = data.conditions[split]
    pred = predict_means(model, data.cond_nodes[conds])
    names = [data.condition_names[c] for c in conds]
    return perturbation_metrics(
        pred, data.means[conds], data.means[0], data.de_idx[conds], names=names
    )
