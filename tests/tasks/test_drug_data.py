"""Drug-response data: joins on the real shared files, expression kinds, splits, bad inputs."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm import datasets
from scfm.tasks.drug_data import (
    DrugDataError,
    PairSplitConfig,
    expression_from,
    load_drug_response,
    make_pair_split,
    model_input,
)


def norm(name) -> str:
    return re.sub(r"[^A-Z0-9]", "", str(name).upper())


@pytest.fixture(scope="module")
def raw():
    """The shared files read with plain pandas (the independent side of the join checks)."""
    resp = pd.read_parquet(datasets.fetch("gdsc2_ic50"))
    exp_lines = pd.read_parquet(datasets.fetch("gdsc_expression"), columns=["ASS1"]).index
    smiles = pd.read_csv(datasets.fetch("drug_smiles"))
    return resp, exp_lines, smiles


@pytest.fixture(scope="module")
def gdsc2():
    return load_drug_response("GDSC2")


@pytest.fixture(scope="module")
def small_expression():
    """40 GDSC cell lines × 300 genes of the shared z-score matrix (fast bad-input checks)."""
    df = pd.read_parquet(datasets.fetch("gdsc_expression"))
    return df.iloc[:40, :300].copy()


def test_readme_facts_of_gdsc2(raw):
    resp, exp_lines, smiles = raw
    assert len(resp) == 242_036
    assert resp["CELL_LINE_NAME"].nunique() == 969 and resp["DRUG_NAME"].nunique() == 286
    assert len(exp_lines) == 975 and len(smiles) == 429
    matched = resp["cell_line_key"].isin(exp_lines) & resp["DRUG_NAME"].isin(smiles["drug_name"])
    assert matched.sum() == 190_597  # "Pairs whose cell line is in GDSC_EXP and drug in SMILES"


def test_join_counts_match_an_independent_pandas_merge(raw, gdsc2):
    resp, exp_lines, smiles = raw
    r = resp.assign(cell=resp["CELL_LINE_NAME"].map(norm), drug=resp["DRUG_NAME"].map(norm))
    s = smiles.assign(drug=smiles["drug_name"].map(norm)).drop_duplicates("drug")
    merged = r.merge(pd.DataFrame({"cell": exp_lines}), on="cell").merge(s, on="drug")
    expected = merged.groupby(["cell", "drug"])["LN_IC50"].mean()
    rep = gdsc2.report
    assert rep.n_rows == len(resp) and rep.n_rows_joined == len(merged) == 190_597
    assert gdsc2.n_pairs == len(expected) == 184_159
    assert rep.n_repeated_rows == len(merged) - len(expected)
    assert len(gdsc2.cell_lines) == merged["cell"].nunique() == 921
    assert len(gdsc2.drugs) == merged["drug"].nunique() == 228
    assert rep.n_cell_lines_response == r["cell"].nunique() == 967  # KM-H2/KMH-2, TT/T-T merge
    assert set(rep.ambiguous_keys) == {"KMH2", "TT"}
    assert len(rep.unmatched_cell_lines) == 967 - 921 and len(rep.unmatched_drugs) == 286 - 228
    assert rep.n_rows_unmatched_cell == int((~r["cell"].isin(exp_lines)).sum())
    assert rep.invalid_smiles == {}
    got = gdsc2.pairs.set_index(["cell_key", "drug_key"])["y"]
    pd.testing.assert_series_equal(
        got.sort_index(), expected.sort_index(), check_names=False, rtol=1e-12
    )
    # indices point at the right names
    row = gdsc2.pairs.iloc[1234]
    assert gdsc2.cell_lines[row["cell"]] == row["cell_key"]
    assert gdsc2.drugs[row["drug"]] == row["drug_key"]
    assert gdsc2.expression.values.index.tolist() == gdsc2.cell_lines
    assert len(gdsc2.graphs) == 228 and gdsc2.graphs.names == gdsc2.drugs
    text = "\n".join(rep.lines())
    assert "46 do not" in text and "58 do not" in text and "184,159 pairs" in text


def test_tissue_from_the_ccle_annotations(gdsc2):
    tissue = dict(zip(gdsc2.cell_lines, gdsc2.tissue, strict=True))
    assert tissue["CAL120"] == "breast" and tissue["DMS114"] == "lung" and tissue["A673"] == "bone"
    assert (gdsc2.tissue == "unknown").sum() < 20


def test_splits_never_leak_and_are_seeded(gdsc2):
    for kind in ("random", "cell", "drug"):
        cfg = PairSplitConfig(kind, test_size=0.1, val_size=0.1, seed=3)
        s = make_pair_split(gdsc2, cfg)
        assert np.intersect1d(s.train, s.test).size == 0
        assert s.train.size + s.test.size == gdsc2.n_pairs
        assert np.isin(s.val, s.train).all() and s.val.size > 0 and s.test.size > 0
        again = make_pair_split(gdsc2, cfg)
        assert np.array_equal(s.test, again.test) and np.array_equal(s.val, again.val)
        other = make_pair_split(gdsc2, PairSplitConfig(kind, seed=4))
        assert not np.array_equal(s.test, other.test)
        if kind == "random":
            continue
        unit = gdsc2.cell if kind == "cell" else gdsc2.drug
        assert not set(unit[s.test]) & set(unit[s.train])  # no held-out line / drug in train
        assert not set(unit[s.val]) & set(unit[s.train_only])
        names = gdsc2.cell_lines if kind == "cell" else gdsc2.drugs
        assert sorted({names[i] for i in unit[s.test]}) == s.held_out
        assert len(s.held_out) == round(0.1 * len(names))


def test_subsets_and_a_split_with_an_empty_fold(small_expression):
    tiny = load_drug_response("GDSC2", max_cell_lines=12, max_drugs=3, seed=1)
    assert len(tiny.cell_lines) == 12 and len(tiny.drugs) == 3
    assert tiny.report.subsample == {"cell_lines": 12, "drugs": 3}
    with pytest.raises(DrugDataError, match="leaves a fold empty.*--test-size"):
        make_pair_split(tiny, PairSplitConfig("drug", test_size=0.1))
    with pytest.raises(DrugDataError, match="split kind"):
        make_pair_split(tiny, PairSplitConfig("tissue"))  # type: ignore[arg-type]
    genes = load_drug_response(
        "GDSC2", expression=small_expression, max_genes=50, max_drugs=5, seed=0
    )
    assert genes.expression.values.shape == (len(genes.cell_lines), 50)
    var = small_expression.loc[genes.cell_lines].var().sort_values(ascending=False)
    assert set(genes.expression.values.columns) == set(var.index[:50])


def test_unknown_names_are_reported_with_counts(small_expression):
    lines = small_expression.index[:3].tolist()
    table = pd.DataFrame(
        {
            "line": [lines[0], lines[1], "NOT-A-LINE", lines[2], lines[0], lines[0]],
            "compound": ["Cisplatin", "Cisplatin", "Cisplatin", "NotADrug", "Cisplatin", "AZD7762"],
            "ic50": [1.0, 2.0, 3.0, 4.0, 3.0, np.nan],
        }
    )
    data = load_drug_response(
        "custom",
        response=table,
        cell_col="line",
        drug_col="compound",
        value_col="ic50",
        value="ic50_um",
        expression=small_expression,
    )
    rep = data.report
    assert rep.n_rows == 6 and rep.n_rows_missing_value == 1
    assert rep.unmatched_cell_lines == ["NOT-A-LINE"] and rep.n_rows_unmatched_cell == 1
    assert rep.unmatched_drugs == ["NotADrug"] and rep.n_rows_unmatched_drug == 1
    assert rep.n_repeated_rows == 1 and data.n_pairs == 2
    y = data.pairs.set_index("cell_key")["y"]
    assert y[lines[0]] == pytest.approx(np.mean([np.log(1.0), np.log(3.0)]))


def test_bad_inputs_stop_with_the_fix(small_expression):
    table = pd.DataFrame({"cell_line": ["A"], "drug": ["B"]})
    with pytest.raises(DrugDataError, match="no column 'ln_ic50'.*value_col"):
        load_drug_response("custom", response=table, expression=small_expression)
    with pytest.raises(DrugDataError, match="unknown drug-response data set"):
        load_drug_response("GDSC3", expression=small_expression)
    nan = small_expression.copy()
    nan.iloc[2, 5] = np.nan
    with pytest.raises(DrugDataError, match="1 NaN or infinite values in 1 cell lines.*impute"):
        expression_from(nan)
    unknown = small_expression.copy()
    unknown.columns = [f"probe_{i}" for i in range(unknown.shape[1])]
    with pytest.raises(DrugDataError, match="0 of the 300 expression genes.*gene symbols"):
        expression_from(unknown)
    with pytest.raises(DrugDataError, match="negative values but kind='bulk'"):
        expression_from(small_expression, kind="bulk")
    with pytest.raises(DrugDataError, match="no response row has both"):
        load_drug_response(
            "custom",
            response=pd.DataFrame({"cell_line": ["X1"], "drug": ["Y1"], "ln_ic50": [1.0]}),
            expression=small_expression,
        )


def test_expression_kinds_and_model_input(small_expression):
    z = expression_from(small_expression)
    assert z.kind == "zscore" and z.n_genes_mapped > 250
    pseudo = model_input(z, zscore_scale=2.0).X
    assert (pseudo > 0).all()
    np.testing.assert_allclose(pseudo, np.exp2(2.0 * small_expression.to_numpy()), rtol=1e-5)
    # a bulk TPM AnnData passes unchanged (scfm.embed normalizes it with pre_normalized="bulk")
    tpm = np.random.default_rng(0).gamma(0.5, 20.0, size=(6, 300)).astype(np.float32)
    adata = ad.AnnData(tpm)
    adata.obs_names = [f"line-{i}" for i in range(6)]
    adata.var_names = small_expression.columns
    bulk = expression_from(adata)
    assert bulk.kind == "bulk" and bulk.values.index[0] == "LINE0"
    np.testing.assert_array_equal(model_input(bulk).X, tpm)
    import scfm
    from scfm.tasks.models import random_init

    bulk_input = model_input(bulk)
    emb = scfm.embed(bulk_input, random_init("tiny", 0), pre_normalized="bulk", device="cpu")
    assert emb.shape == (6, 4 * 32) and np.isfinite(emb).all()
    assert bulk_input.uns["scfm"]["X_scfm"]["settings"]["pre_normalized"] == "bulk"
