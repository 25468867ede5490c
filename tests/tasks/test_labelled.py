"""Labels, splits, rare / unseen classes and the normalized-input fallback on real files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm import datasets
from scfm.data.io import read_counts
from scfm.data.validate import InputValidationError
from scfm.tasks.labelled import (
    LabelError,
    SplitConfig,
    class_table,
    labelled_data,
    make_split,
    scored_classes,
)
from scfm.tasks.normalized import reconstruct_counts


def test_kang_condition_split(kang):
    data, split = kang
    cond = data.obs["condition"].astype(str).to_numpy()
    assert (cond[split.train] == "control").all() and split.train.size == 936
    assert (cond[split.test] == "stimulated").all() and split.test.size == 1039
    assert np.isin(split.val, split.train).all()
    assert split.train_only.size + split.val.size == split.train.size
    # validation is stratified: every class keeps ~15 % of its training cells there
    for c in np.unique(data.labels):
        n_train = (data.labels[split.train] == c).sum()
        assert (data.labels[split.val] == c).sum() == round(0.15 * n_train)
    assert scored_classes(class_table(data.labels, split)) == sorted(np.unique(data.labels))


def test_random_split_is_stratified_and_deterministic(pbmc68k):
    data, split = pbmc68k
    again = make_split(data, SplitConfig(test_size=0.3, seed=0))
    np.testing.assert_array_equal(split.test, again.test)
    other = make_split(data, SplitConfig(test_size=0.3, seed=1))
    assert not np.array_equal(split.test, other.test)
    assert np.intersect1d(split.train, split.test).size == 0
    assert split.train.size + split.test.size == data.n_cells
    counts = pd.Series(data.labels).value_counts()
    test_counts = pd.Series(data.labels[split.test]).value_counts()
    for c, n in counts.items():
        assert test_counts.get(c, 0) == min(round(0.3 * n), n - 1)


def _toy(labels, condition=None):
    n = len(labels)
    obs = pd.DataFrame(
        {"label": np.asarray(labels, dtype=object)}, index=[f"c{i}" for i in range(n)]
    )
    if condition is not None:
        obs["condition"] = condition
    X = sp.random(n, 30, density=0.3, format="csr", random_state=0) * 10
    X.data = np.ceil(X.data)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))


def test_missing_labels_are_dropped_and_counted():
    labels = ["a"] * 6 + [None, "", "nan", "NA"] + ["b"] * 6 + [np.nan]
    data = labelled_data(_toy(pd.Series(labels, dtype=object)), "label")
    assert data.n_missing_labels == 5 and data.n_cells == 12
    assert set(data.labels) == {"a", "b"}


def test_rare_and_unseen_classes_are_flagged():
    labels = ["a"] * 20 + ["b"] * 20 + ["rare"] * 3 + ["new"] * 4
    cond = ["ctrl", "stim"] * 10 + ["ctrl", "stim"] * 10 + ["ctrl", "ctrl", "stim"] + ["stim"] * 4
    data = labelled_data(_toy(labels, cond), "label")
    split = make_split(data, SplitConfig(split_key="condition", train_value="ctrl"))
    table = class_table(data.labels, split).set_index("class")
    assert table.loc["rare", "status"] == "rare" and table.loc["rare", "n_train"] == 2
    assert table.loc["new", "status"] == "unseen" and table.loc["new", "n_test"] == 4
    assert scored_classes(table.reset_index()) == ["a", "b"]


def test_label_and_split_errors_name_the_fix():
    adata = _toy(["a"] * 5 + ["b"] * 5, ["x"] * 5 + ["y"] * 5)
    with pytest.raises(LabelError, match="obs columns are: label, condition"):
        labelled_data(adata, "cell_type")
    data = labelled_data(adata, "label")
    with pytest.raises(LabelError, match="values are: x, y"):
        make_split(data, SplitConfig(split_key="condition", train_value="control"))
    with pytest.raises(LabelError, match="needs a training value"):
        make_split(data, SplitConfig(split_key="condition"))
    with pytest.raises(LabelError, match="single class"):
        labelled_data(_toy(["a"] * 4), "label")


def test_reconstructs_pbmc68k_counts_from_its_log_normalized_raw():
    """The opt-in fallback recovers the registered counts file from raw.X and n_counts."""
    lognorm = read_counts(datasets.fetch("pbmc68k_reduced"), layer="raw")
    reference = read_counts(datasets.fetch("pbmc68k_counts"))
    counts, info = reconstruct_counts(lognorm.X, lognorm.obs["n_counts"].to_numpy())
    assert info.scale == pytest.approx(1e4, rel=2e-3)
    diff = abs(counts - sp.csr_matrix(reference.X, dtype=np.float32))
    assert diff.nnz == 0 or diff.max() == 0
    assert info.residual_max < 0.5


def test_reconstruction_refuses_scaled_or_wrong_totals():
    scaled = read_counts(datasets.fetch("pbmc68k_reduced"))  # z-scored X
    with pytest.raises(InputValidationError, match="negative values"):
        reconstruct_counts(scaled.X, scaled.obs["n_counts"].to_numpy())
    lognorm = read_counts(datasets.fetch("pbmc68k_reduced"), layer="raw")
    wrong = np.random.default_rng(0).uniform(500, 5000, lognorm.n_obs)
    with pytest.raises(InputValidationError, match="far from integers"):
        reconstruct_counts(lognorm.X, wrong)


def _donors(n_donors=8, per_donor=6):
    labels = ["a", "b", "c"] * (n_donors * per_donor // 3)
    donor = [f"d{i // per_donor}" for i in range(n_donors * per_donor)]
    return labelled_data(_toy(labels, donor).copy(), "label")


def _with_donor(data):
    data.obs = data.obs.rename(columns={"condition": "donor"})
    return data


def test_several_training_values_and_grouped_donor_holdout():
    data = _with_donor(_donors())
    donor = data.obs["donor"].astype(str).to_numpy()
    split = make_split(data, SplitConfig(split_key="donor", train_value=("d0", "d1", "d2")))
    assert set(donor[split.train]) == {"d0", "d1", "d2"}
    assert set(donor[split.test]) == {f"d{i}" for i in range(3, 8)}
    split = make_split(
        data, SplitConfig(split_key="donor", train_value=["d0", "d1"], test_value=("d5", "d6"))
    )
    assert set(donor[split.test]) == {"d5", "d6"} and split.train.size == 12
    assert "train 'd0', 'd1' → test 'd5', 'd6'" in split.description

    # grouped hold-out: 3 whole donors test, the others train; seeded and reproducible
    held = make_split(data, SplitConfig(split_key="donor", test_groups=3, seed=0))
    test_donors, train_donors = set(donor[held.test]), set(donor[held.train])
    assert len(test_donors) == 3 and not test_donors & train_donors
    assert len(train_donors) == 5 and held.train.size + held.test.size == data.n_cells
    assert np.isin(held.val, held.train).all()
    again = make_split(data, SplitConfig(split_key="donor", test_groups=3, seed=0))
    np.testing.assert_array_equal(held.test, again.test)
    draws = {
        tuple(
            sorted(set(donor[make_split(data, SplitConfig("donor", test_groups=3, seed=s)).test]))
        )
        for s in range(6)
    }
    assert len(draws) > 1  # the seed picks the donors
    assert "3 of 8 groups held out for test (seed 0)" in held.description


def test_grouped_split_errors_name_the_fix():
    data = _with_donor(_donors())
    with pytest.raises(LabelError, match="between 1 and 7"):
        make_split(data, SplitConfig(split_key="donor", test_groups=8))
    with pytest.raises(LabelError, match="drop --train-value"):
        make_split(data, SplitConfig(split_key="donor", train_value="d0", test_groups=2))
    with pytest.raises(LabelError, match="both training and test"):
        make_split(data, SplitConfig(split_key="donor", train_value=("d0", "d1"), test_value="d1"))
    with pytest.raises(LabelError, match="no value 'd9'"):
        make_split(data, SplitConfig(split_key="donor", train_value=("d0", "d9")))
