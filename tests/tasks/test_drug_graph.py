"""Drug graphs from SMILES: DeepCDR's 75 atom features, adjacency, packing, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scfm.tasks.drug_graph import (
    ATOM_SYMBOLS,
    FEATURE_BLOCKS,
    N_ATOM_FEATURES,
    DrugGraphs,
    InvalidSmilesError,
    mol_graph,
    morgan_fingerprints,
    normalized_edges,
)

ASPIRIN = "CC(=O)OC1=CC=CC=C1C(=O)O"


def block(features: np.ndarray, name: str) -> np.ndarray:
    _, start, width = next(b for b in FEATURE_BLOCKS if b[0] == name)
    return features[:, start : start + width]


def test_feature_layout_is_the_75_deepcdr_features():
    assert len(ATOM_SYMBOLS) == 44 and ATOM_SYMBOLS[-1] == "Unknown"
    assert sum(w for _, _, w in FEATURE_BLOCKS) == N_ATOM_FEATURES == 75
    ends = [s + w for _, s, w in FEATURE_BLOCKS]
    assert [s for _, s, _ in FEATURE_BLOCKS][1:] == ends[:-1]


def test_aspirin_atoms_bonds_and_features():
    g = mol_graph(ASPIRIN)
    assert g.n_atoms == 13 and len(g.bonds) == 13
    f = g.features
    assert f.shape == (13, 75)
    sym = block(f, "symbol")
    assert sym[:, ATOM_SYMBOLS.index("C")].sum() == 9
    assert sym[:, ATOM_SYMBOLS.index("O")].sum() == 4
    assert (sym.sum(axis=1) == 1).all()  # one symbol per atom
    assert block(f, "aromatic").sum() == 6  # the benzene ring
    # atom 0 is the methyl carbon: C, degree 1, implicit valence 3, SP3, 3 hydrogens
    assert np.flatnonzero(f[0]).tolist() == [0, 44 + 1, 55 + 3, 64 + 2, 70 + 3]
    assert block(f, "hybridization")[:, 1].sum() == 12  # every other heavy atom is SP2
    assert block(f, "formal_charge").sum() == 0 and block(f, "radical_electrons").sum() == 0
    a = g.adjacency()
    assert (a == a.T).all() and a.sum() == 26 and a.sum(axis=1).tolist()[:3] == [1, 3, 1]


def test_unknown_symbol_charge_and_normalized_adjacency():
    g = mol_graph("[Xe].[NH4+]")
    assert block(g.features, "symbol")[0, -1] == 1  # xenon is not in the list → "Unknown"
    assert block(g.features, "formal_charge")[1, 0] == 1
    src, dst, w = normalized_edges(mol_graph("CCO"))
    dense = np.zeros((3, 3))
    dense[dst, src] = w
    deg = np.array([2, 3, 2])  # neighbours + self loop
    a_hat = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]]) / np.sqrt(np.outer(deg, deg))
    np.testing.assert_allclose(dense, a_hat, rtol=1e-6)


def test_invalid_smiles_is_reported_and_skipped():
    with pytest.raises(InvalidSmilesError, match="cannot parse"):
        mol_graph("C1CC(")
    graphs, invalid = DrugGraphs.from_smiles({"ASPIRIN": ASPIRIN, "BROKEN": "C1CC(", "EMPTY": ""})
    assert graphs.names == ["ASPIRIN"] and set(invalid) == {"BROKEN", "EMPTY"}


def test_packed_subset_gives_the_same_embeddings_as_one_graph_at_a_time():
    from scfm.tasks.deepcdr import DrugGCN

    smiles = {"A": ASPIRIN, "B": "CCO", "C": "c1ccc2ccccc2c1", "D": "CC(C)Cc1ccc(cc1)C(C)C(=O)O"}
    graphs, _ = DrugGraphs.from_smiles(smiles)
    packed = graphs.subset([3, 0, 2])
    assert packed.n_graphs == 3 and packed.x.shape == (15 + 13 + 10, 75)
    torch.manual_seed(0)
    gcn = DrugGCN([16, 16, 8], dropout=0.1).eval()
    with torch.no_grad():
        together = gcn(packed)
        alone = torch.cat([gcn(graphs.subset([i])) for i in (3, 0, 2)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert together.shape == (3, 8)


def test_morgan_fingerprints():
    fp = morgan_fingerprints([ASPIRIN, "C1CC(", "CCO"], n_bits=256)
    assert fp.shape == (3, 256) and set(np.unique(fp)) <= {0.0, 1.0}
    assert fp[0].sum() > fp[2].sum() > 0 and fp[1].sum() == 0
