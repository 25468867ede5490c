"""The SCAD head: gradient reversal, label rules, the proxy target, domain alignment, AUROC against
scikit-learn, save / load / predict, and the errors for bad input (real GDSC data)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from scfm.tasks.base import fit_head, save_head
from scfm.tasks.drug_data import expression_from, top_variance_genes
from scfm.tasks.metrics import average_precision, binary_auroc
from scfm.tasks.scad import (
    DomainBatch,
    SCADData,
    SCADHead,
    SCADNet,
    domain_probe_auroc,
    extract_features,
    grad_reverse,
    predict_proba,
)
from scfm.tasks.scad_data import (
    LabelRule,
    ProxyConfig,
    ScadDataError,
    check_gene_overlap,
    gdsc_thresholds,
    load_source,
    make_proxy_target,
    target_from_anndata,
)
from scfm.tasks.scad_eval import (
    ScadTargetConfig,
    drug_info,
    expression_inputs,
    predict_scad,
    scad_data,
)

PROXY = ProxyConfig(n_sensitive_lines=3, n_resistant_lines=3, cells_per_line=20, seed=1)
FAST = {"max_epochs": 12, "patience": 12, "h_dim": 64, "z_dim": 32, "lr": 1e-2}


@pytest.fixture(scope="module")
def expr300():
    """The shared GDSC expression, its 300 highest-variance genes."""
    return top_variance_genes(expression_from(None), 300)


@pytest.fixture(scope="module")
def plx(expr300):
    """PLX-4720 (GDSC1, GDSC thresholds), its proxy target, and the raw-expression SCAD data."""
    full = load_source("PLX4720", expression=expr300)
    source, target = make_proxy_target(full, PROXY)
    inputs = expression_inputs(source, target, ScadTargetConfig())
    data = scad_data(
        inputs, source, target, val_size=0.2, test_size=0.3, seed=0, drug_info=drug_info(source)
    )
    return full, source, target, data


# ------------------------------------------------------------------------------ mechanics
def test_gradient_reversal_flips_gradients_numerically():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64)
    (grad_reverse(x, 2.5) * w).sum().backward()
    torch.testing.assert_close(x.grad, -2.5 * w)  # d/dx of sum(w·x) is w; reversed and scaled
    # identity forward; central differences of the forward give +w, the backward gives -w
    eps, i, j = 1e-6, 2, 1
    xp, xm = x.detach().clone(), x.detach().clone()
    xp[i, j] += eps
    xm[i, j] -= eps
    numeric = ((grad_reverse(xp) * w).sum() - (grad_reverse(xm) * w).sum()) / (2 * eps)
    assert float(numeric) == pytest.approx(float(w[i, j]), rel=1e-6)
    # inside the network: the extractor gets exactly the negated discriminator gradient
    net = SCADNet(4, h_dim=8, z_dim=4, dropout=0.0, adv_weight=1.0).double().eval()
    h = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    net.discriminator(h).sum().backward()
    reversed_grad = h.grad.clone()
    h.grad = None
    net.discriminator.net(h).sum().backward()  # the same layers without the reversal
    torch.testing.assert_close(reversed_grad, -h.grad)


def test_auroc_and_auprc_match_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = np.round(rng.normal(size=n) + 0.7 * y, int(rng.integers(0, 3)))  # with ties
        assert binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(binary_auroc([1, 1, 1], [0.1, 0.2, 0.3]))  # one class: undefined
    with pytest.raises(ValueError, match="0 .negative. or 1"):
        binary_auroc([0, 2], [0.1, 0.2])


def test_model_output_shapes():
    net = SCADNet(7, h_dim=16, z_dim=8, dropout=0.5, adv_weight=1.0)
    out = net(DomainBatch(torch.randn(4, 7), torch.randn(3, 7)))
    assert out.shape == (7, 2)
    assert torch.isfinite(out[:4]).all() and torch.isnan(out[4:, 0]).all()  # no target response
    assert torch.isfinite(out[4:, 1]).all()
    assert net.eval()(torch.randn(5, 7)).shape == (5,)
    loss = SCADHead().loss(net.train(), out, torch.tensor([1.0, 0, 0, 1]))
    assert torch.isfinite(loss) and loss > 0


def _shifted(seed: int) -> SCADData:
    """Synthetic domains: the label in feature 0, a target-only shift of 1.5 SD in features 1-3."""
    rng = np.random.default_rng(seed)

    def sample(n: int, shift: float):
        y = (rng.random(n) < 0.3).astype(np.float32)
        x = rng.normal(size=(n, 10)).astype(np.float32)
        x[:, 0] += 2.0 * y
        x[:, 1:4] += shift
        return x, y

    xs, ys = sample(200, 0.0)
    xt, yt = sample(200, 1.5)
    rows = {"train": np.arange(150), "val": np.arange(150, 200), "adapt": np.arange(150)}
    return SCADData(xs, ys, xt, yt, rows)


def test_adaptation_lowers_domain_separability_while_the_classifier_learns():
    """A fresh linear probe on the extractor's features tells the domains apart less well as
    training goes on (λ = 1), not so without the adversary (λ = 0); the response still learns."""
    data = _shifted(2)
    cfg = {
        "max_epochs": 40,
        "patience": 100,
        "h_dim": 16,
        "z_dim": 8,
        "dropout": 0.0,
        "optimizer": "adam",
        "lr": 3e-3,
        "batch_size": 50,
        "seed": 2,
    }
    curves = {}
    for lam in (0.0, 1.0):
        trace = []

        def report(metrics, improved, model, trace=trace):
            xs = extract_features(model, data.source_x[data.rows["train"]])
            xt = extract_features(model, data.target_x[data.rows["adapt"]])
            trace.append((metrics["val_auroc"], domain_probe_auroc(xs, xt)))

        fit_head(SCADHead(), data, {**cfg, "adv_weight": lam}, device="cpu", report=report)
        curves[lam] = np.array(trace)
    first, last = curves[1.0][0], curves[1.0][-10:].mean(axis=0)
    assert first[1] > 0.9  # the shift is obvious at first
    assert last[1] < first[1] - 0.05  # …and shrinks under the adversary
    assert last[1] < curves[0.0][-10:, 1].mean() - 0.05  # more than without it
    assert last[0] > 0.85 and last[0] > first[0] + 0.2  # the response is still learned


# ------------------------------------------------------------------------------ data
def test_labels_follow_the_documented_rules(expr300):
    thresholds = gdsc_thresholds()
    assert thresholds["PLX4720"] == pytest.approx(2.3691)  # the first screen, not the rescreen
    src = load_source("Sorafenib", expression=expr300)
    assert (src.n_sensitive, src.n_resistant) == (27, 355)
    np.testing.assert_array_equal(src.labels, (src.ln_ic50 < 0.61159).astype(int))
    assert src.drug == "Sorafenib" and "0.612" in src.rule
    z = load_source("Sorafenib", expression=expr300, rule=LabelRule("zscore", z_cut=0.5))
    expected = (z.ln_ic50 - z.ln_ic50.mean()) / z.ln_ic50.std() < -0.5
    np.testing.assert_array_equal(z.labels, expected.astype(int))
    assert 0.25 < z.labels.mean() < 0.35
    # names are matched without case and punctuation; repeated screens averaged per line
    plx = load_source("plx 4720", expression=expr300)
    assert plx.drug == "PLX-4720" and plx.report["n_repeated_rows"] == 905
    assert len(plx.cell_lines) == len(set(plx.cell_lines)) == 901


def test_user_label_table_replaces_ic50(expr300):
    lines = expr300.values.index[:30]
    table = pd.DataFrame(
        {"cell_line": lines, "label": ["sensitive"] * 12 + ["R"] * 17 + ["banana"]}
    )
    with pytest.raises(ScadDataError, match="'banana'"):
        load_source("anything", labels=table, expression=expr300)
    src = load_source("anything", labels=table.iloc[:29], expression=expr300, min_per_class=10)
    assert (src.n_sensitive, src.n_resistant) == (12, 17) and np.isnan(src.ln_ic50).all()


def test_too_few_lines_of_a_class_stop_with_the_fix(expr300):
    with pytest.raises(ScadDataError, match=r"27 sensitive and 355 resistant.*at least 40"):
        load_source("Sorafenib", expression=expr300, min_per_class=40)
    with pytest.raises(ScadDataError, match="close names: NVP-TAE684"):
        load_source("TAE684", expression=expr300)
    src = load_source("Sorafenib", expression=expr300)
    with pytest.raises(ScadDataError, match="holding out 20 for the proxy"):
        make_proxy_target(src, replace(PROXY, n_sensitive_lines=20))


def test_proxy_target_is_raw_counts_of_held_out_lines(plx):
    full, source, target, _ = plx
    held = target.proxy["held_out_lines"]
    assert len(held) == 6 and not set(held) & set(source.cell_lines)  # no leakage
    assert len(source.cell_lines) == len(full.cell_lines) - 6
    X = target.X.toarray()
    assert X.dtype == np.int32 and (X >= 0).all()
    depth = X.sum(axis=1)
    assert depth.min() >= 1000 and depth.max() <= 5000
    obs = target.adata.obs
    line_label = dict(zip(full.cell_lines, full.labels, strict=True))
    expected = [line_label[c] for c in obs["cell_line"]]
    np.testing.assert_array_equal(target.labels, expected)
    assert target.labels.sum() == 60 and "proxy" in target.name
    # each line's pooled cells follow its bulk profile 2^(2z)
    for line in held[:2]:
        pooled = X[(obs["cell_line"] == line).to_numpy()].sum(axis=0)
        z = full.expression.values.loc[line].to_numpy()
        r = np.corrcoef(np.log1p(pooled / pooled.sum() * 1e5), 2 * z * np.log(2))[0, 1]
        assert r > 0.8


def test_unmatched_genes_and_unlabelled_targets_stop(plx, expr300):
    import anndata as ad

    _, source, target, _ = plx
    from scfm.data.genes import GeneVocab

    other = [g for g in GeneVocab.load().names[:3000] if g not in set(expr300.values.columns)]
    cells = ad.AnnData(target.X[:, :300].astype(np.float32))
    cells.var_names = other[:300]
    cells.obs_names = target.adata.obs_names
    foreign = target_from_anndata(cells)
    with pytest.raises(ScadDataError, match="share only 0 genes"):
        check_gene_overlap(source.expression.values.columns, foreign)
    with pytest.raises(ScadDataError, match="--label-key"):
        foreign.require_labels("evaluating SCAD")
    cells.obs["response"] = "sensitive"
    with pytest.raises(ScadDataError, match="0 resistant"):
        target_from_anndata(cells, label_key="response").require_labels()
    with pytest.raises(ScadDataError, match="label column 'nope' is not in obs"):
        target_from_anndata(cells, label_key="nope")


# ------------------------------------------------------------------------------ learning
def test_scad_beats_chance_on_the_proxy_target(plx):
    _, _, _, data = plx
    fit = fit_head(SCADHead(), data, {**FAST, "seed": 0}, device="cpu")
    x, y = data.xy("test")
    p = predict_proba(fit.model, x)
    auroc = binary_auroc(y, p)
    assert auroc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auroc > 0.85, auroc
    scored = SCADHead().score(fit.model, data, "test", fit.config)
    assert scored["test_auroc"] == pytest.approx(auroc)
    assert scored["test_auprc"] == pytest.approx(average_precision_score(y, p))
    assert 0 <= fit.best_metrics["val_domain_auroc"] <= 1 and fit.best_metrics["val_auroc"] > 0.7


def test_saved_head_predicts_into_a_users_anndata(plx, tmp_path):
    import anndata as ad

    _, source, target, data = plx
    fit = fit_head(SCADHead(), data, {**FAST, "max_epochs": 3, "seed": 1}, device="cpu")
    folder = save_head(tmp_path / "head", fit.model, fit.config, data.spec())
    cells = ad.AnnData(target.X.copy(), obs=target.adata.obs[["cell_line"]].copy())
    cells.var_names = target.adata.var_names
    result = predict_scad(folder, cells, group_key="cell_line", key_added="plx")
    expected = predict_proba(fit.model, data.target_x)
    np.testing.assert_allclose(cells.obs["plx_sensitivity"].to_numpy(), expected, atol=1e-6)
    assert set(cells.obs["plx_prediction"]) <= {"sensitive", "resistant"}
    assert cells.uns["plx"]["drug"] == "PLX-4720" and result.n_genes_missing == 0
    assert result.groups["n_cells"].sum() == target.n_cells
    # a user's cells missing a few model genes still work; those genes enter as the mean
    fewer = cells[:, 20:].copy()
    assert predict_scad(folder, fewer).n_genes_missing > 0
    assert np.isfinite(fewer.obs["scad_sensitivity"]).all()
