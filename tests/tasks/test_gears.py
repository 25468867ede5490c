"""The GEARS head: graph convolution against torch-geometric, the loss against GEARS' formula,
a short training run against the no-change baseline, save / load, scfm gene features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scfm.tasks.base import fit_head, load_head, save_head
from scfm.tasks.gears import (
    GearsData,
    GearsHead,
    PerturbTarget,
    SGConv,
    evaluate_split,
    gcn_normalize,
    gears_loss,
    predict_means,
    scfm_gene_features,
)
from scfm.tasks.gears_evaluate import load_gears_task
from scfm.tasks.perturb_data import PerturbDataConfig
from scfm.tasks.perturb_graphs import GraphConfig
from scfm.tasks.perturb_metrics import perturbation_metrics
from tests.tasks.perturb_fixtures import papalexi_subset, toy_perturb_adata

CFG = PerturbDataConfig("toy", perturbation_key="grna_target", control="non-targeting")


@pytest.fixture(scope="module")
def toy_task():
    task = load_gears_task(CFG, GraphConfig(gene_sets=("hallmark",)), adata=toy_perturb_adata())
    return task, task.split(1)


@pytest.fixture(scope="module")
def trained(toy_task):
    """GEARS fitted for a few epochs, epochs selected on the training perturbations themselves
    (this checks that it can fit them; held-out selection is the evaluation's business)."""
    task, split = toy_task
    module = GearsData.build(task.data, split, task.pert_graph)
    train = module.conditions["train"]
    module = dataclasses.replace(
        module,
        rows={**module.rows, "val": np.flatnonzero(np.isin(module.cell_condition, train))},
        conditions={**module.conditions, "val": train},
    )
    fit = fit_head(
        GearsHead(), module, {"max_epochs": 8, "patience": 8, "batch_size": 16}, device="cpu"
    )
    return module, fit


def test_sgconv_matches_torch_geometric():
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn import SGConv as PygSGConv

    rng = np.random.default_rng(0)
    n = 9
    src = rng.integers(0, n, 30)
    dst = rng.integers(0, n, 30)
    keep = np.unique(np.stack([src, dst]), axis=1)  # no duplicate edges; some self loops
    src, dst = keep
    w = rng.uniform(0.1, 1.0, src.size).astype(np.float32)
    x = torch.randn(n, 5)
    ours = SGConv(5, 3)
    theirs = PygSGConv(5, 3, K=1)
    theirs.lin.load_state_dict(ours.lin.state_dict())
    s, d, norm = (torch.from_numpy(a) for a in gcn_normalize(src, dst, w, n))
    expected = theirs(x, torch.from_numpy(np.stack([src, dst])), torch.from_numpy(w))
    torch.testing.assert_close(ours(x, s, d, norm), expected, rtol=1e-5, atol=1e-6)


def _reference_loss(pred, y, group, mask, ctrl, gamma, lam, sign):
    """GEARS' loss_fct, one perturbation at a time (numpy)."""
    total = []
    for p in np.unique(group):
        rows = group == p
        genes = mask[rows][0]
        pp, yy, c = pred[rows][:, genes], y[rows][:, genes], ctrl[genes]
        n, g = pp.shape
        focal = (np.abs(pp - yy) ** (2 + gamma)).sum() / n / g
        direction = ((sign(yy - c) - sign(pp - c)) ** 2).sum() / n / g
        total.append(focal + lam * direction)
    return float(np.mean(total))


def test_gears_loss_matches_the_formula_and_the_direction_term_trains():
    rng = np.random.default_rng(1)
    B, G = 12, 7
    group = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    mask = np.ones((B, G), bool)
    mask[group == 1, :3] = False  # genes with a zero mean in that condition
    pred, y, ctrl = rng.normal(size=(B, G)), rng.normal(size=(B, G)), rng.normal(size=G)
    target = PerturbTarget(torch.tensor(y), torch.tensor(group), torch.tensor(mask))
    got = gears_loss(torch.tensor(pred), target, torch.tensor(ctrl), direction_lambda=0.1, tau=0.1)
    tanh = lambda d: np.tanh(d / 0.1)  # noqa: E731
    assert float(got) == pytest.approx(_reference_loss(pred, y, group, mask, ctrl, 2, 0.1, tanh))
    # as tau → 0 the direction term is GEARS' sign term
    sharp = gears_loss(torch.tensor(pred), target, torch.tensor(ctrl), tau=1e-9)
    assert float(sharp) == pytest.approx(
        _reference_loss(pred, y, group, mask, ctrl, 2, 0.1, np.sign)
    )

    # the direction term gives a gradient; GEARS' torch.sign version gives none
    p = torch.tensor(pred, requires_grad=True)
    direction_only = gears_loss(p, target, torch.tensor(ctrl), direction_lambda=1.0) - gears_loss(
        p, target, torch.tensor(ctrl), direction_lambda=0.0
    )
    (grad,) = torch.autograd.grad(direction_only, p)
    assert grad.abs().sum() > 0
    p2 = torch.tensor(pred, requires_grad=True)
    sign_term = (
        (torch.sign(torch.tensor(y) - torch.tensor(ctrl)) - torch.sign(p2 - torch.tensor(ctrl)))
        .pow(2)
        .sum()
    )
    (grad_sign,) = torch.autograd.grad(sign_term, p2)
    assert grad_sign.abs().sum() == 0


def test_short_training_beats_no_change_on_training_perturbations(trained):
    module, fit = trained
    losses = [h["train_loss"] for h in fit.history]
    assert losses[-1] < losses[0]
    scores = evaluate_split(fit.model, module, "train")
    conds = module.conditions["train"]
    ctrl = module.means[0]
    no_change = perturbation_metrics(
        np.tile(ctrl, (len(conds), 1)), module.means[conds], ctrl, module.de_idx[conds]
    )
    assert scores["mse_de"].mean() < 0.5 * no_change["mse_de"].mean()
    assert scores["pearson_delta"].mean() > 0.5


def test_saved_head_predicts_the_same(trained, tmp_path):
    module, fit = trained
    save_head(tmp_path, fit.model, fit.config, module.spec())
    model, payload = load_head(tmp_path, GearsHead())
    assert payload["spec"]["extra"]["genes"] == module.genes
    perts = module.cond_nodes[module.conditions["test"]]
    np.testing.assert_allclose(predict_means(model, perts), predict_means(fit.model, perts))


def test_scfm_gene_features_for_in_and_out_of_vocabulary_genes():
    from scfm.data.genes import GeneVocab
    from scfm.inference import gene_embeddings
    from scfm.tasks.models import random_init

    adata = papalexi_subset(n_perturbations=6, cells=30, controls=40)
    task = load_gears_task(PerturbDataConfig("papalexi2021"), GraphConfig(), adata=adata)
    model = random_init("tiny", seed=0)
    features = scfm_gene_features(task.data, model, max_cells=16, device="cpu", seed=0)
    outside = int((task.data.vocab_index < 0).sum())
    assert outside > 0 and features.n_missing == outside
    assert (features.index < 0).tolist() == (task.data.vocab_index < 0).tolist()
    assert features.values.shape[1] == model.cfg.dec_dim
    # feature rows: decoder states averaged over the 16 control cells drawn, standardized
    ctrl_rows = np.flatnonzero(task.data.cell_condition == 0)
    used = np.sort(np.random.default_rng(0).choice(ctrl_rows, 16, replace=False))
    names = sorted({GeneVocab.load().names[i] for i in task.data.vocab_index if i >= 0})
    direct = gene_embeddings(
        _control_anndata(task.data, used), model, genes=names, device="cpu", progress=False
    ).values
    direct = (direct - direct.mean(axis=0)) / direct.std(axis=0)
    for gene in ("STAT1", "JAK2", str(task.data.genes[0])):
        i = list(task.data.genes).index(gene)
        row = names.index(GeneVocab.load().names[task.data.vocab_index[i]])
        np.testing.assert_allclose(features.values[features.index[i]], direct[row], atol=1e-4)

    split = task.split(1)
    module = GearsData.build(task.data, split, task.pert_graph, features)
    spec = module.spec()
    assert spec.in_dim == model.cfg.dec_dim and spec.extra["n_genes_without_feature"] == outside
    net = GearsHead().build({**GearsHead().default_config()}, spec, module)
    assert net.missing_features.shape == (outside, model.cfg.dec_dim)
    batch, target = next(module.batches("train", 8, shuffle=True))
    assert net(batch).shape == target.y.shape == (8, len(task.data.genes))


def _control_anndata(data, rows):
    import anndata as ad
    import pandas as pd

    return ad.AnnData(
        X=data.counts[rows],
        obs=pd.DataFrame(index=[f"c{i}" for i in rows]),
        var=pd.DataFrame(index=data.genes),
    )


def test_combinations_sum_their_genes_embeddings():
    from tests.tasks.perturb_fixtures import norman_like_adata

    task = load_gears_task(
        PerturbDataConfig("norman-like"),
        GraphConfig(gene_sets=("hallmark",)),
        adata=norman_like_adata(),
    )
    module = GearsData.build(task.data, task.split(1), task.pert_graph)
    combo = task.data.index(["HK2+IRF1"])[0]
    nodes = [task.pert_graph.nodes.index(g) for g in ("HK2", "IRF1")]
    assert module.cond_nodes.shape[1] == 2 and sorted(module.cond_nodes[combo]) == sorted(nodes)
    assert (module.cond_nodes[0] == -1).all()  # the control perturbs nothing
    model = GearsHead().build(GearsHead().default_config(), module.spec(), module)
    batch, target = next(module.batches("train", 16, shuffle=True, seed=0))
    assert model(batch).shape == target.y.shape
    pred = predict_means(model, module.cond_nodes[[combo, 0]])
    assert pred.shape == (2, len(module.genes)) and not np.allclose(pred[0], pred[1])
