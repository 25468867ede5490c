from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scfm import datasets
from scfm.data.genes import N_GENES, GeneVocab, parse_ensembl
from scfm.data.io import read_counts


@pytest.fixture(scope="module")
def vocab() -> GeneVocab:
    return GeneVocab.load()


@pytest.fixture(scope="module")
def vocab_file() -> pd.DataFrame:
    return pd.read_csv(datasets.fetch("vocab"), sep="\t")


def test_vocab_keeps_file_order(vocab, vocab_file):
    assert len(vocab) == N_GENES == len(vocab_file)
    assert list(vocab.names) == vocab_file["gene_name"].tolist()
    assert vocab.index("A1BG") == 0 and vocab.index("zzz3") == N_GENES - 1


def test_vocab_round_trips(vocab, tmp_path):
    vocab.to_tsv(tmp_path / "v.tsv")
    assert (tmp_path / "v.tsv").read_bytes() == datasets.fetch("vocab").read_bytes()
    again = GeneVocab.load(tmp_path / "v.tsv")
    assert again.names == vocab.names and again.checksum == vocab.checksum
    mapping = vocab.map(vocab.names)
    np.testing.assert_array_equal(mapping.index, np.arange(N_GENES))
    assert set(mapping.rules) == {"direct"}


def test_mitochondrial_twins_map_to_plain_entry(vocab):
    assert vocab.mito_mask.sum() == 57  # 37 MT genes, 20 of them twice
    m = vocab.map(["MT-ATP6", "mt-atp6", "ENSG00000198899", "MT-ATP6__chrM"])
    plain, twin = vocab.index("MT-ATP6"), vocab.index("MT-ATP6__chrM")
    assert m.index.tolist() == [plain, plain, plain, twin]


def test_kang_symbols_match_an_independent_count(vocab):
    adata = read_counts(datasets.fetch("kang2018"))
    upper = {n.upper() for n in vocab.names}
    expected_direct = sum(g.upper() in upper for g in adata.var_names)
    report = vocab.map(adata.var_names).report
    assert report.by_rule["direct"] == expected_direct == 5805  # as documented for the data set
    assert report.by_rule["ensembl"] == 0
    assert report.n_input == 6998
    assert sum(report.by_rule.values()) == report.n_input
    # Aliases only ever rescue genes that are not vocabulary names.
    assert report.by_rule["alias"] > 0


def test_tenx_ensembl_ids_match_an_independent_join(vocab):
    adata = read_counts(datasets.fetch("tenx_v3_h5"))
    gencode = pd.read_csv(datasets.fetch("gencode_id2name"), header=None, names=["id", "name"])
    name_of = dict(zip(gencode["id"], gencode["name"], strict=True))
    upper = {n.upper(): i for i, n in enumerate(vocab.names)}
    expected = [upper.get(str(name_of.get(g, "")).upper(), -1) for g in adata.var_names]
    mapping = vocab.map(adata.var_names)
    via_gencode = np.array(expected) >= 0
    # Every id whose GENCODE name is a vocabulary name maps exactly there ...
    np.testing.assert_array_equal(mapping.index[via_gencode], np.array(expected)[via_gencode])
    # ... and the HGNC fallback adds only ids that GENCODE alone cannot place.
    assert set(mapping.rules[via_gencode]) == {"ensembl"}
    assert mapping.report.by_rule["ensembl"] >= via_gencode.sum() == 212


def test_versioned_ensembl_ids_map_like_unversioned(vocab):
    adata = read_counts(datasets.fetch("tenx_v3_h5"))
    plain = vocab.map(adata.var_names)
    versioned = vocab.map([f"{g}.{i % 9 + 1}" for i, g in enumerate(adata.var_names)])
    np.testing.assert_array_equal(plain.index, versioned.index)
    assert parse_ensembl("ENSG00000141510.17") == ("ENSG00000141510", "ENSG")
    assert parse_ensembl("ENSMUSG00000029580") == ("ENSMUSG00000029580", "ENSMUSG")
    assert parse_ensembl("TP53") is None


@pytest.mark.parametrize(
    ("alias", "target"),
    [
        ("SEPT7", "SEPTIN7"),  # previous symbol -> approved symbol in the vocabulary
        ("P53", "TP53"),  # alias symbol
        ("MARCHF8", "MARCHF8"),
    ],
)
def test_alias_and_previous_symbols(vocab, alias, target):
    m = vocab.map([alias])
    assert m.index[0] == vocab.index(target)


def test_current_symbol_reaches_vocab_entry_with_old_name(vocab):
    # The vocabulary predates some HGNC renames: find an entry whose name is now a previous symbol.
    hgnc = pd.read_csv(datasets.fetch("hgnc"), usecols=["Approved symbol", "Previous symbol"])
    approved = set(hgnc["Approved symbol"].str.upper())
    old = hgnc.dropna()
    old = old[old["Previous symbol"].str.upper().isin({n.upper() for n in vocab.names})]
    old = old[~old["Previous symbol"].str.upper().isin(approved)]
    old = old[~old["Approved symbol"].str.upper().isin({n.upper() for n in vocab.names})]
    old = old.drop_duplicates("Previous symbol").drop_duplicates("Approved symbol", keep=False)
    assert len(old) > 10
    sample = old.head(25)
    m = vocab.map(sample["Approved symbol"].tolist())
    expected = [vocab.index(p) for p in sample["Previous symbol"]]
    assert m.index.tolist() == expected
    assert set(m.rules) == {"alias"}


def test_collisions_are_summed_and_reported(vocab):
    genes = ["TP53", "ENSG00000141510", "CD3E", "NOT_A_GENE", "cd3e"]
    X = sp.csr_matrix(np.array([[1, 2, 3, 4, 5], [0, 7, 0, 1, 1]], dtype=np.int32))
    m = vocab.map(genes)
    out = m.apply(X)
    assert out.shape == (2, N_GENES) and out.dtype == np.int32
    tp53, cd3e = vocab.index("TP53"), vocab.index("CD3E")
    assert out[0, tp53] == 3 and out[1, tp53] == 7
    assert out[0, cd3e] == 8 and out[1, cd3e] == 1
    assert out.sum() == X.sum() - X[:, 3].sum()
    report = m.report
    assert report.n_collisions == 2 and report.n_collided_inputs == 4
    assert report.collisions == {"CD3E": ["CD3E", "cd3e"], "TP53": ["TP53", "ENSG00000141510"]}
    assert report.by_rule == {"direct": 3, "ensembl": 1, "alias": 0, "unmapped": 1}
    assert "collisions (counts summed)" in str(report) and "NOT_A_GENE" in str(report)


def test_apply_checks_the_width(vocab):
    with pytest.raises(ValueError, match="3 gene columns but the mapping was built for 2"):
        vocab.map(["TP53", "CD3E"]).apply(np.ones((1, 3)))


# --- properties ---------------------------------------------------------------------------

_gene_pool = st.sampled_from(
    [
        "TP53",
        "tp53",
        "CD3E",
        "ENSG00000141510",
        "ENSG00000141510.3",
        "SEPT7",
        "MT-CO1",
        "XIST",
        "NOTAGENE1",
        "LINC99999",
        "GAPDH",
        "ACTB",
        "p53",
        "ENSMUSG00000029580",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    genes=st.lists(_gene_pool, min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_mapping_preserves_mapped_totals(vocab, genes, seed):
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(5, len(genes))).astype(np.int64)
    m = vocab.map(genes)
    out = m.apply(X)
    np.testing.assert_array_equal(np.asarray(out.sum(axis=1)).ravel(), X[:, m.mapped].sum(axis=1))
    # Each vocabulary column equals the sum of the input columns that land on it.
    for j in np.unique(m.index[m.mapped]):
        np.testing.assert_array_equal(out[:, j].toarray().ravel(), X[:, m.index == j].sum(axis=1))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.integers(0, N_GENES - 1), min_size=1, max_size=30, unique=True),
    data=st.data(),
)
def test_mapping_is_per_gene_and_case_insensitive(vocab, names, data):
    genes = [vocab.names[i] for i in names]
    flip = data.draw(st.lists(st.booleans(), min_size=len(genes), max_size=len(genes)))
    mixed = [g.lower() if f else g for g, f in zip(genes, flip, strict=True)]
    m = vocab.map(mixed)
    np.testing.assert_array_equal(m.index, names)
    perm = data.draw(st.permutations(range(len(mixed))))
    np.testing.assert_array_equal(vocab.map([mixed[i] for i in perm]).index, m.index[list(perm)])
