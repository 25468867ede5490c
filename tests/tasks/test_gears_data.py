"""Perturbation data: label parsing, pseudobulks and DE genes against direct computations, the
GEARS simulation split, graphs computed by hand, baselines and metrics against numpy / scipy,
and the documented errors for bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scfm.data.validate import InputValidationError
from scfm.tasks.perturb_baselines import run_baselines, solve_bilinear
from scfm.tasks.perturb_data import (
    PerturbationError,
    PerturbDataConfig,
    load_perturb_data,
    log_normalize,
    parse_label,
    simulation_split,
)
from scfm.tasks.perturb_graphs import (
    coexpression_graph,
    gene_set_graph,
    graph_source,
    read_edge_list,
    restrict,
)
from scfm.tasks.perturb_metrics import mean_metrics, perturbation_metrics
from tests.tasks.perturb_fixtures import MODULES, TARGETS, norman_like_adata, toy_perturb_adata

CFG = PerturbDataConfig("toy", perturbation_key="grna_target", control="non-targeting")


@pytest.fixture(scope="module")
def toy():
    return load_perturb_data(CFG, adata=toy_perturb_adata())


def load(adata, **kw):
    return load_perturb_data(PerturbDataConfig(**{**CFG.to_dict(), **kw}), adata=adata)


# ----------------------------------------------------------------------------------- labels
def test_labels_parse_as_gears_conditions():
    assert parse_label("ctrl", "ctrl") is None
    assert parse_label("A+ctrl", "ctrl") == ("A",)
    assert parse_label("ctrl+A", "ctrl") == ("A",)
    assert parse_label("B+A", "ctrl") == ("A", "B")
    assert parse_label("non-targeting", "non-targeting") is None
    assert parse_label("KLF1_MAP2K6", "ctrl", "_") == ("KLF1", "MAP2K6")


def test_pseudobulk_and_de_genes_match_a_direct_computation(toy):
    adata = toy_perturb_adata()
    X = adata.X.toarray().astype(np.float64)
    np.testing.assert_allclose(
        toy.expr.toarray(), np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4), rtol=1e-5
    )
    L = toy.expr.toarray().astype(np.float64)
    labels = adata.obs["grna_target"].astype(str).to_numpy()
    assert toy.conditions[0] == "non-targeting" and sorted(toy.conditions[1:]) == sorted(TARGETS)
    ctrl = L[labels == "non-targeting"]
    for i, cond in enumerate(toy.conditions):
        group = L[labels == cond]
        np.testing.assert_allclose(toy.means[i], group.mean(axis=0), rtol=1e-6, atol=1e-8)
        if i == 0:
            continue
        # Welch t-test of the condition against the control, genes ranked by |t|
        t, _ = stats.ttest_ind(group, ctrl, equal_var=False)
        t = np.nan_to_num(t)
        expected = np.argsort(-np.abs(t), kind="stable")[:20]
        assert list(toy.de_idx[i]) == list(expected), cond
    # the planted module is what the DE genes find
    stat1 = toy.index(["STAT1"])[0]
    assert set(toy.genes[toy.de_idx[stat1][:10]]) <= set(MODULES["ifng"])


# ----------------------------------------------------------------------------------- splits
def test_simulation_split_never_trains_on_held_out_perturbations():
    genes = {g: (g,) for g in "ABCDEFGHIJKLMNOPQRST"}
    genes |= {"A+B": ("A", "B"), "A+K": ("A", "K"), "C+D": ("C", "D"), "K+L": ("K", "L")}
    genes |= {"E+F": ("E", "F"), "G+H": ("G", "H"), "M+N": ("M", "N"), "P+Q": ("P", "Q")}
    for seed in range(1, 8):
        s = simulation_split(genes, seed)
        train, val, test = set(s.train), set(s.val), set(s.test)
        assert not (train & test) and not (val & test) and not (train & val)
        assert train | val | test == set(genes)
        seen = set(s.train_genes)
        assert all(g in seen for p in s.train + s.val if len(genes[p]) == 1 for g in genes[p])
        for p in s.test:  # a held-out perturbation has an unseen gene, or is a combo_seen2
            n_seen = sum(g in seen for g in genes[p])
            if len(genes[p]) == 1:
                assert s.subgroup[p] == "unseen_single" and n_seen == 0
            else:
                assert s.subgroup[p] == f"combo_seen{n_seen}"
        # GEARS draws the training genes with RandomState(seed).choice over the sorted genes
        expected = np.random.RandomState(seed).choice(sorted("ABCDEFGHIJKLMNOPQRST"), 15, False)
        assert set(s.train_genes) == set(expected)
        assert simulation_split(genes, seed) == s  # deterministic
    assert simulation_split(genes, 1).test != simulation_split(genes, 2).test


# ----------------------------------------------------------------------------------- graphs
def test_gene_set_graph_matches_jaccard_by_hand():
    sets = {"S1": ["A", "B", "C"], "S2": ["A", "B"], "S3": ["C", "D"], "S4": ["E"]}
    # memberships A {S1,S2}, B {S1,S2}, C {S1,S3}, D {S3}, E {S4}:
    # J(A,B) = 1, J(A,C) = J(B,C) = 1/3, J(C,D) = 1/2, all others 0; each gene J = 1 with itself
    g = gene_set_graph(["A", "B", "C", "D", "E"], sets, k=20, threshold=0.1)
    got = {(s, t): w for s, t, w in g.to_frame().itertuples(index=False)}
    third = pytest.approx(1 / 3)
    expected = {
        ("A", "A"): 1, ("B", "A"): 1, ("C", "A"): third,
        ("A", "B"): 1, ("B", "B"): 1, ("C", "B"): third,
        ("C", "C"): 1, ("D", "C"): 0.5, ("A", "C"): third, ("B", "C"): third,
        ("D", "D"): 1, ("C", "D"): 0.5,
        ("E", "E"): 1,
    }  # fmt: skip
    assert got == expected
    # k = 1: itself plus the single most similar gene (ties: node order); 0.4 drops the 1/3 links
    g1 = gene_set_graph(["A", "B", "C", "D", "E"], sets, k=1, threshold=0.4)
    assert g1.edges() == {
        ("A", "A"), ("B", "A"), ("A", "B"), ("B", "B"), ("C", "C"), ("D", "C"),
        ("D", "D"), ("C", "D"), ("E", "E"),
    }  # fmt: skip
    # an edge list restricted to some nodes keeps only their edges, top k + 1 per target
    r = restrict(g, ["C", "A", "D"], k=1)
    assert r.edges() == {("A", "A"), ("C", "A"), ("C", "C"), ("D", "C"), ("D", "D"), ("C", "D")}


def test_edge_list_and_gene_set_files(tmp_path):
    edges = tmp_path / "go.csv"
    pd.DataFrame(
        {"source": ["STAT1", "IRF1", "MARCH8"], "target": ["IRF1", "STAT1", "STAT1"],
         "importance": [0.5, 0.5, 0.2]}
    ).to_csv(edges, index=False)  # fmt: skip
    g = read_edge_list(edges)
    assert g.n_edges == 3
    assert g.edges() == {("STAT1", "IRF1"), ("IRF1", "STAT1"), ("MARCH8", "STAT1")}
    src = graph_source(edge_list=edges)
    # the old symbol MARCH8 resolves to the vocabulary's current name, as in the data
    assert src.genes == {"STAT1", "IRF1", "MARCHF8"}
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("SET1\tx\tSTAT1\tIRF1\nSET2\tx\tIRF1\tMARCH8\n")
    src = graph_source(gene_sets=[str(gmt)])
    assert src.genes == {"STAT1", "IRF1", "MARCHF8"}
    # memberships: STAT1 {1}, IRF1 {1, 2}, MARCHF8 {2}: J(IRF1, ·) = 1/2, J(STAT1, MARCHF8) = 0
    g = src.graph(["IRF1", "MARCHF8", "STAT1"], k=5, threshold=0.1)
    assert g.edges() == {
        ("IRF1", "IRF1"), ("MARCHF8", "IRF1"), ("STAT1", "IRF1"), ("IRF1", "MARCHF8"),
        ("MARCHF8", "MARCHF8"), ("IRF1", "STAT1"), ("STAT1", "STAT1"),
    }  # fmt: skip
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a": ["X"], "b": ["Y"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="source, target and importance"):
        read_edge_list(bad)


def test_coexpression_graph_matches_numpy_pearson():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 1))
    X = np.hstack(
        [z + 0.1 * rng.normal(size=(200, 1)), -z, rng.normal(size=(200, 3)), np.ones((200, 1))]
    )
    g = coexpression_graph(X, list("abcdef"), k=2, threshold=0.4)
    r = np.abs(np.corrcoef(X[:, :5].T))
    edges = {(s, t): w for s, t, w in g.to_frame().itertuples(index=False)}
    assert edges[("b", "a")] == pytest.approx(r[1, 0], rel=1e-5)
    assert {s for s, t in edges if t == "a"} == {"a", "b"}  # c, d, e are uncorrelated
    assert {s for s, t in edges if t == "c"} == {"c"} and ("f", "f") not in edges  # constant


# ---------------------------------------------------------------------- baselines and metrics
def test_bilinear_ridge_matches_least_squares():
    rng = np.random.default_rng(1)
    G, P = rng.normal(size=(30, 4)), rng.normal(size=(3, 12))
    W_true = rng.normal(size=(4, 3))
    Y = G @ W_true @ P + rng.normal(size=(30, 1))  # plus a per-gene offset (the centre)
    W, center = solve_bilinear(G, Y, P, ridge=1e-9)
    Yc = Y - Y.mean(axis=1, keepdims=True)
    # min ||Yc - G W P||: W = G⁺ Yc P⁺, by two least-squares solves
    A = np.linalg.lstsq(G, Yc, rcond=None)[0]
    W_ls = np.linalg.lstsq(P.T, A.T, rcond=None)[0].T
    np.testing.assert_allclose(W, W_ls, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(center, Y.mean(axis=1))
    lam = 0.5
    W_r, _ = solve_bilinear(G, Y, P, ridge=lam)
    expected = (
        np.linalg.inv(G.T @ G + lam * np.eye(4))
        @ G.T
        @ Yc
        @ P.T
        @ np.linalg.inv(P @ P.T + lam * np.eye(3))
    )
    np.testing.assert_allclose(W_r, expected, rtol=1e-8)


def test_baselines_and_metrics_against_direct_computations(toy):
    split = simulation_split(
        {c: toy.condition_genes[i] for i, c in enumerate(toy.conditions) if i}, 1
    )
    preds = {b.key: b for b in run_baselines(toy, split)}
    assert set(preds) == {"no_change", "mean", "linear"}  # no combinations: no additive row
    ctrl = toy.means[0]
    fit = toy.index(split.train + split.val)
    np.testing.assert_allclose(preds["no_change"].means, np.tile(ctrl, (len(split.test), 1)))
    expected_mean = ctrl + (toy.means[fit] - ctrl).mean(axis=0)
    np.testing.assert_allclose(preds["mean"].means[0], expected_mean)
    lin = preds["linear"]
    assert lin.info["n_test_without_embedding"] == 0  # every toy target is a measured gene

    test = toy.index(split.test)
    truth, de = toy.means[test], toy.de_idx[test]
    for key in ("mean", "linear"):
        m = perturbation_metrics(preds[key].means, truth, ctrl, de, names=split.test)
        for i, row in m.iterrows():
            p, t, d = preds[key].means[i], truth[i], de[i]
            assert row.mse_de == pytest.approx(np.mean((p[d] - t[d]) ** 2))
            assert row.mse == pytest.approx(np.mean((p - t) ** 2))
            assert row.pearson_delta == pytest.approx(stats.pearsonr(p - ctrl, t - ctrl)[0])
            assert row.pearson_delta_de == pytest.approx(
                stats.pearsonr(p[d] - ctrl[d], t[d] - ctrl[d])[0]
            )
            assert row.direction_de == pytest.approx(
                np.mean(np.sign(p[d] - ctrl[d]) == np.sign(t[d] - ctrl[d]))
            )
            assert row.l2_top == pytest.approx(np.linalg.norm(p - t))  # < 1,000 genes: all
    m = perturbation_metrics(preds["no_change"].means, truth, ctrl, de)
    assert m["pearson_delta"].isna().all() and (m["direction_de"] == 0).all()
    assert np.isnan(mean_metrics(m)["pearson_delta"])
    # the structure is in the training data: the mean and linear baselines beat no change
    mse = {
        k: mean_metrics(perturbation_metrics(v.means, truth, ctrl, de))["mse_de"]
        for k, v in preds.items()
    }
    assert mse["mean"] < mse["no_change"] and mse["linear"] < mse["no_change"]


def test_additive_baseline_sums_single_effects(toy):
    from scfm.tasks.perturb_baselines import additive_baseline

    # a combination made of two training singles: control + both observed changes
    combo = "AURKA+STAT1"
    data = dataclasses.replace(
        toy,
        conditions=[*toy.conditions, combo],
        condition_genes=[*toy.condition_genes, ("AURKA", "STAT1")],
    )
    perts, means, info = additive_baseline(data, ["STAT1", "AURKA"], [combo, "IRF1"])
    assert perts == [combo] and info["n_unseen_genes"] == 0
    change = toy.means - toy.means[0]
    i, j = toy.index(["STAT1", "AURKA"])
    np.testing.assert_allclose(means[0], toy.means[0] + change[i] + change[j])


# ------------------------------------------------------------------------------ bad inputs
def test_gene_outside_the_vocabulary_is_refused_with_the_list():
    adata = toy_perturb_adata()
    labels = adata.obs["grna_target"].astype(str).to_numpy().copy()
    labels[labels == "IRF7"] = "NOTAGENE1"
    labels[labels == "MX1"] = "MX1+FOOBAR2"
    adata.obs["grna_target"] = labels
    with pytest.raises(PerturbationError) as exc:
        load(adata)
    msg = str(exc.value)
    assert "2 perturbations" in msg and "vocabulary" in msg
    assert "NOTAGENE1 (NOTAGENE1)" in msg and "MX1+FOOBAR2 (FOOBAR2)" in msg
    assert "--drop-invalid" in msg
    data = load(adata, drop_invalid=True)
    assert "NOTAGENE1" not in data.conditions and data.dropped["vocab"] == [
        "MX1+FOOBAR2",
        "NOTAGENE1",
    ]


def test_gene_outside_the_graph_is_refused():
    graph_genes = {g for m in MODULES.values() for g in m} - {"HK2", "BUB1"}
    with pytest.raises(PerturbationError, match=r"graph: BUB1 \(BUB1\); HK2 \(HK2\)"):
        load_perturb_data(CFG, adata=toy_perturb_adata(), graph_genes=graph_genes)
    with pytest.raises(PerturbationError, match="--gene-sets / --pert-graph"):
        load_perturb_data(CFG, adata=toy_perturb_adata(), graph_genes=graph_genes)


def test_missing_control_label_and_column_name_the_fix():
    with pytest.raises(PerturbationError, match=r"'ctrl' does not occur.*'non-targeting'"):
        load(toy_perturb_adata(), control="ctrl")
    with pytest.raises(PerturbationError, match="obs columns are: grna_target"):
        load(toy_perturb_adata(), perturbation_key="condition")


def test_too_few_cells_are_listed():
    adata = toy_perturb_adata()
    labels = adata.obs["grna_target"].astype(str).to_numpy()
    keep = np.ones(adata.n_obs, bool)
    keep[np.flatnonzero(labels == "PLK1")[5:]] = False
    keep[np.flatnonzero(labels == "HK2")[12:]] = False
    with pytest.raises(PerturbationError) as exc:
        load(adata[keep].copy())
    msg = str(exc.value)
    assert "fewer than 20 cells: HK2 (12 cells); PLK1 (5 cells)" in msg and "--min-cells" in msg
    data = load(adata[keep].copy(), min_cells=5)
    assert "PLK1" in data.conditions


def test_normalized_input_is_refused():
    adata = toy_perturb_adata()
    adata.X = log_normalize(adata.X)
    with pytest.raises(InputValidationError, match="looks log-normalized; pass raw counts"):
        load(adata)


def test_norman_style_labels_with_combinations():
    """'A+ctrl' / 'ctrl+A' singles and 'A+B' combinations, as in Norman et al."""
    adata = norman_like_adata()
    data = load_perturb_data(PerturbDataConfig("norman-like"), adata=adata)
    assert data.control == "ctrl" and data.has_combinations
    assert {"AURKA", "PLK1", "HK2+IRF1", "PLK1+STAT1"} <= set(data.conditions)
    assert data.condition_genes[data.index(["HK2+IRF1"])[0]] == ("HK2", "IRF1")
    genes = {c: data.condition_genes[i] for i, c in enumerate(data.conditions) if i}
    for seed in (1, 2, 3):
        split = simulation_split(genes, seed)
        preds = {b.key: b for b in run_baselines(data, split)}
        combos = [p for p in split.test if "+" in p]
        assert preds["additive"].perturbations == combos
        for p in combos:
            assert split.subgroup[p].startswith("combo_seen")
