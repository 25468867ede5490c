"""Drugs as molecular graphs (DeepCDR's drug input) and as Morgan fingerprints, from SMILES.

Atom features are the 75 of deepchem's ``ConvMolFeaturizer`` that DeepCDR stored per drug
(re-derived with RDKit, see docs/drug_response.md), in this order:

====================  =====  ========================================================
block                 width  values
====================  =====  ========================================================
atom symbol           44     :data:`ATOM_SYMBOLS`, anything else → the last ("Unknown")
degree                11     ``GetDegree()`` 0 … 10
implicit valence      7      0 … 6 (larger → the last)
formal charge         1      ``GetFormalCharge()`` (raw integer)
radical electrons     1      ``GetNumRadicalElectrons()`` (raw integer)
hybridization         5      SP, SP2, SP3, SP3D, SP3D2 (others → all zero)
aromatic              1      ``GetIsAromatic()``
total hydrogens       5      ``GetTotalNumHs()`` 0 … 4 (larger → the last)
====================  =====  ========================================================

Edges are the bonds (both directions). :class:`DrugGraphs` holds every drug's graph once, packed
(nodes of all drugs stacked, edge lists with the symmetric normalization
``D^-1/2 (A + I) D^-1/2`` of DeepCDR's ``NormalizeAdj`` precomputed); :meth:`DrugGraphs.subset`
packs the graphs of a few drugs for one training step without re-featurizing anything.

RDKit is imported inside the functions (an optional dependency of the drug heads).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# fmt: off
ATOM_SYMBOLS: tuple[str, ...] = (
    "C", "N", "O", "S", "F", "Si", "P", "Cl", "Br", "Mg", "Na", "Ca", "Fe", "As", "Al", "I", "B",
    "V", "K", "Tl", "Yb", "Sb", "Sn", "Ag", "Pd", "Co", "Se", "Ti", "Zn", "H", "Li", "Ge", "Cu",
    "Au", "Ni", "Cd", "In", "Mn", "Zr", "Cr", "Pt", "Hg", "Pb", "Unknown",
)
# fmt: on
HYBRIDIZATIONS = ("SP", "SP2", "SP3", "SP3D", "SP3D2")
# (name, first column, width) of each feature block
FEATURE_BLOCKS: tuple[tuple[str, int, int], ...] = (
    ("symbol", 0, 44),
    ("degree", 44, 11),
    ("implicit_valence", 55, 7),
    ("formal_charge", 62, 1),
    ("radical_electrons", 63, 1),
    ("hybridization", 64, 5),
    ("aromatic", 69, 1),
    ("total_h", 70, 5),
)
N_ATOM_FEATURES = 75


class InvalidSmilesError(ValueError):
    """RDKit cannot parse a SMILES string."""


def _one_hot(value, choices: Sequence, clip_last: bool) -> list[float]:
    """One-hot of ``value`` in ``choices``; unknown → the last entry (``clip_last``) or all zero."""
    out = [0.0] * len(choices)
    if value in choices:
        out[choices.index(value)] = 1.0
    elif clip_last:
        out[-1] = 1.0
    return out


def _implicit_valence(atom) -> int:
    from rdkit import Chem

    try:  # RDKit ≥ 2024.09 deprecates GetImplicitValence (it logs a warning per call)
        return int(atom.GetValence(Chem.ValenceType.IMPLICIT))
    except AttributeError:  # pragma: no cover - older RDKit
        return int(atom.GetImplicitValence())


def atom_features(atom) -> list[float]:
    """The 75 DeepCDR / deepchem ``ConvMolFeaturizer`` features of one RDKit atom."""
    return (
        _one_hot(atom.GetSymbol(), ATOM_SYMBOLS, True)
        + _one_hot(atom.GetDegree(), list(range(11)), True)
        + _one_hot(_implicit_valence(atom), list(range(7)), True)
        + [float(atom.GetFormalCharge()), float(atom.GetNumRadicalElectrons())]
        + _one_hot(str(atom.GetHybridization()), HYBRIDIZATIONS, False)
        + [float(atom.GetIsAromatic())]
        + _one_hot(atom.GetTotalNumHs(), list(range(5)), True)
    )


def parse_smiles(smiles: str):
    """An RDKit molecule, or :class:`InvalidSmilesError`."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # parse errors are reported by us, once, with the drug name
    try:
        mol = Chem.MolFromSmiles(str(smiles)) if isinstance(smiles, str) and smiles else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None or mol.GetNumAtoms() == 0:
        raise InvalidSmilesError(f"RDKit cannot parse SMILES {smiles!r}")
    return mol


@dataclass(frozen=True)
class MolGraph:
    """One molecule: ``(n_atoms, 75)`` features and its bonds as an undirected edge list."""

    features: np.ndarray  # (n_atoms, 75) float32
    bonds: np.ndarray  # (n_bonds, 2) int64, each bond once

    @property
    def n_atoms(self) -> int:
        return int(self.features.shape[0])

    def adjacency(self) -> np.ndarray:
        """Dense 0/1 ``(n_atoms, n_atoms)`` adjacency (no self loops)."""
        a = np.zeros((self.n_atoms, self.n_atoms), dtype=np.float32)
        a[self.bonds[:, 0], self.bonds[:, 1]] = 1.0
        a[self.bonds[:, 1], self.bonds[:, 0]] = 1.0
        return a


def mol_graph(smiles: str) -> MolGraph:
    """Heavy-atom graph of a SMILES string (hydrogens implicit, as in DeepCDR)."""
    mol = parse_smiles(smiles)
    feats = np.array([atom_features(a) for a in mol.GetAtoms()], dtype=np.float32)
    bonds = np.array(
        [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], dtype=np.int64
    ).reshape(-1, 2)
    return MolGraph(feats, bonds)


def normalized_edges(graph: MolGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, dst, weight)`` of ``D^-1/2 (A + I) D^-1/2``: both bond directions + self loops."""
    n = graph.n_atoms
    loops = np.arange(n, dtype=np.int64)
    src = np.concatenate([graph.bonds[:, 0], graph.bonds[:, 1], loops])
    dst = np.concatenate([graph.bonds[:, 1], graph.bonds[:, 0], loops])
    deg = np.bincount(dst, minlength=n).astype(np.float64)  # neighbours + 1
    w = 1.0 / np.sqrt(deg[src] * deg[dst])
    return src, dst, w.astype(np.float32)


@dataclass
class PackedGraphs:
    """Graphs of some drugs packed into one disconnected graph (tensors, ready for the GCN)."""

    x: Tensor  # (N, 75) node features
    src: Tensor  # (E,) edge sources (incl. self loops)
    dst: Tensor  # (E,) edge targets
    weight: Tensor  # (E,) normalized adjacency values
    graph: Tensor  # (N,) which packed graph each node belongs to
    n_graphs: int

    def to(self, device) -> PackedGraphs:
        return PackedGraphs(
            self.x.to(device),
            self.src.to(device),
            self.dst.to(device),
            self.weight.to(device),
            self.graph.to(device),
            self.n_graphs,
        )


@dataclass
class DrugGraphs:
    """Every drug's graph, featurized once; :meth:`subset` packs any selection of them.

    Attributes
    ----------
    names
        Drug names, in index order.
    graphs
        One :class:`MolGraph` per drug.
    """

    names: list[str]
    graphs: list[MolGraph]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.graphs):
            raise ValueError("one graph per drug name")
        self._edges = [normalized_edges(g) for g in self.graphs]
        self._all: PackedGraphs | None = None

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_smiles(cls, smiles: dict[str, str]) -> tuple[DrugGraphs, dict[str, str]]:
        """Graphs of the parseable drugs and ``{name: error}`` of the others (skipped)."""
        names, graphs, invalid = [], [], {}
        for name, smi in smiles.items():
            try:
                graphs.append(mol_graph(smi))
                names.append(name)
            except InvalidSmilesError as exc:
                invalid[name] = str(exc)
        for name, err in invalid.items():
            logger.warning("drug %s skipped: %s", name, err)
        return cls(names, graphs), invalid

    def subset(self, ids: np.ndarray | Sequence[int]) -> PackedGraphs:
        """The graphs of drugs ``ids`` (in that order) packed into one graph."""
        ids = np.asarray(ids, dtype=np.int64)
        sizes = np.array([self.graphs[i].n_atoms for i in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        x = np.concatenate([self.graphs[i].features for i in ids])
        src = np.concatenate([self._edges[i][0] + o for i, o in zip(ids, offsets, strict=True)])
        dst = np.concatenate([self._edges[i][1] + o for i, o in zip(ids, offsets, strict=True)])
        w = np.concatenate([self._edges[i][2] for i in ids])
        graph = np.repeat(np.arange(ids.size, dtype=np.int64), sizes)
        return PackedGraphs(
            torch.from_numpy(x),
            torch.from_numpy(src),
            torch.from_numpy(dst),
            torch.from_numpy(w),
            torch.from_numpy(graph),
            int(ids.size),
        )

    def packed(self) -> PackedGraphs:
        """All drugs packed once (cached)."""
        if self._all is None:
            self._all = self.subset(np.arange(len(self)))
        return self._all


def morgan_fingerprints(smiles: Sequence[str], n_bits: int = 1024, radius: int = 2) -> np.ndarray:
    """``(n, n_bits)`` 0/1 Morgan (ECFP-like) fingerprints; drugs with invalid SMILES get zeros."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.float32)
    for i, smi in enumerate(smiles):
        try:
            out[i] = gen.GetFingerprintAsNumPy(parse_smiles(smi))
        except InvalidSmilesError:
            continue
    return out
