"""The 19,264-gene scFoundation vocabulary and mapping of any gene list onto it.

Input genes are resolved in this order (the first rule that applies wins):

``direct``
    The name equals a vocabulary name, ignoring case (``cd3e`` → ``CD3E``).
``ensembl``
    An Ensembl gene id (``ENSG…``, with or without a ``.version`` suffix) whose GENCODE v44 name,
    or else its HGNC approved symbol, resolves to a vocabulary gene.
``alias``
    An HGNC previous or alias symbol whose approved symbol is in the vocabulary, or a current
    symbol for a vocabulary entry that still carries an older name (``MARCHF8`` → ``MARCH8``).
    Previous symbols win over aliases; a symbol that names several different genes is ambiguous
    and left unmapped.

Anything else is ``unmapped`` and dropped. Two input genes that land on one vocabulary gene are a
*collision*: :meth:`GeneMapping.apply` sums their counts, so the total count is preserved.

Mitochondrial duplicates
------------------------
The vocabulary lists 20 mitochondrial genes twice, as ``MT-X`` and ``MT-X__chrM`` (two names of
one gene in the scFoundation source). scfm maps symbols, aliases and Ensembl ids to the plain
``MT-X`` entry only. The ``__chrM`` twin is reached only by an input that literally carries that
name. The official preprocessing also reindexes by name, so in its data the ``__chrM`` column is
zero too; keeping both entries keeps the index order (and pretrained weights) compatible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm import datasets
from scfm.data.packed import N_GENES

MapRule = Literal["direct", "ensembl", "alias", "unmapped"]
RULES: tuple[MapRule, ...] = ("direct", "ensembl", "alias", "unmapped")

_ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d{6,})(\.\d+)?(_PAR_Y)?$", re.IGNORECASE)
_MT_TWIN_SUFFIX = "__chrM"


def parse_ensembl(name: str) -> tuple[str, str] | None:
    """Split an Ensembl gene id into (unversioned id, species prefix), or None if it is not one.

    ``ENSG00000141510.17`` → ``("ENSG00000141510", "ENSG")``; ``ENSMUSG…`` gives prefix ``ENSMUSG``.
    """
    m = _ENSEMBL_RE.match(name.strip())
    if not m:
        return None
    stable = m.group(1).upper()
    prefix = stable.rstrip("0123456789")
    return stable, prefix


@dataclass(frozen=True)
class _Tables:
    """Lookup tables built once from the vocabulary, GENCODE and HGNC files."""

    by_upper: dict[str, int]  # vocabulary name (upper) -> index
    canonical_to_vocab: dict[str, int]  # HGNC approved symbol (upper) -> index
    previous: dict[str, str]  # previous symbol (upper) -> approved (upper), unambiguous only
    alias: dict[str, str]  # alias symbol (upper) -> approved (upper), unambiguous only
    approved: frozenset[str]  # approved symbols (upper)
    ensembl_to_name: dict[str, str]  # GENCODE id -> name (upper)
    ensembl_to_approved: dict[str, str]  # HGNC Ensembl id -> approved symbol (upper)


def _unambiguous(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    targets: dict[str, set[str]] = defaultdict(set)
    for key, value in pairs:
        targets[key].add(value)
    return {k: next(iter(v)) for k, v in targets.items() if len(v) == 1}


class GeneVocab:
    """The ordered 19,264-gene vocabulary of scFoundation.

    The file's order is the index order, as the pretrained model expects.

    Examples
    --------
    >>> vocab = GeneVocab.load()
    >>> vocab.index("CD3E"), len(vocab)                    # doctest: +SKIP
    >>> mapping = vocab.map(adata.var_names)               # doctest: +SKIP
    >>> print(mapping.report)                              # doctest: +SKIP
    """

    def __init__(self, names: Sequence[str]):
        names = [str(n) for n in names]
        upper = [n.upper() for n in names]
        if len(set(upper)) != len(upper):
            dup = [n for n, c in Counter(upper).items() if c > 1][:5]
            raise ValueError(f"vocabulary names are not unique (ignoring case): {dup}")
        self.names: tuple[str, ...] = tuple(names)
        self._by_upper = {n: i for i, n in enumerate(upper)}

    @classmethod
    def load(cls, path: str | None = None) -> GeneVocab:
        """Load the vocabulary file (default: the registered ``vocab`` resource)."""
        return _load_vocab(str(path or datasets.fetch("vocab")))

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"GeneVocab({len(self)} genes, {self.names[0]} … {self.names[-1]})"

    def index(self, name: str) -> int:
        """Vocabulary index of an exact (case-insensitive) vocabulary name."""
        try:
            return self._by_upper[name.upper()]
        except KeyError:
            raise KeyError(f"{name!r} is not a vocabulary gene name") from None

    @property
    def checksum(self) -> str:
        """sha256 of the ordered names; checkpoints and corpora record it to refuse a mismatch."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    @property
    def mito_mask(self) -> np.ndarray:
        """Boolean mask of mitochondrial genes (``MT-`` names, both twins)."""
        return np.array([n.upper().startswith("MT-") for n in self.names])

    def to_tsv(self, path: str) -> None:
        """Write the vocabulary in the original ``gene_name\\tindex`` format."""
        pd.DataFrame({"gene_name": self.names, "index": np.arange(len(self))}).to_csv(
            path, sep="\t", index=False
        )

    @cache  # noqa: B019 - vocab objects are few and long-lived
    def _tables(self) -> _Tables:
        return _build_tables(self)

    def map(self, genes: Sequence[str]) -> GeneMapping:
        """Map input gene names / Ensembl ids onto the vocabulary.

        Parameters
        ----------
        genes
            Input gene identifiers in column order (e.g. ``adata.var_names``).

        Returns
        -------
        GeneMapping
            Per-input vocabulary index (``-1`` when unmapped), the rule used, and a report.
        """
        t = self._tables()
        genes = [str(g) for g in genes]
        index = np.full(len(genes), -1, dtype=np.int64)
        rules = np.empty(len(genes), dtype=object)
        case_changed = 0
        mouse_style = 0
        foreign_ensembl: Counter[str] = Counter()
        for i, gene in enumerate(genes):
            idx, rule = _resolve(gene, t)
            index[i], rules[i] = idx, rule
            if rule == "direct" and self.names[idx] != gene.strip():
                case_changed += 1
                g = gene.strip()
                # mouse convention: capitalized (Cd3e), not all-lowercase human symbols (cd3e)
                mouse_style += g[:1].isupper() and g[1:] != g[1:].upper()
            if rule == "unmapped":
                parsed = parse_ensembl(gene)
                if parsed and parsed[1] != "ENSG":
                    foreign_ensembl[parsed[1]] += 1
        return GeneMapping(
            vocab=self,
            genes=tuple(genes),
            index=index,
            rules=rules.astype(str),
            n_case_changed=case_changed,
            foreign_ensembl=dict(foreign_ensembl),
            n_mouse_style=mouse_style,
        )


def _resolve(gene: str, t: _Tables) -> tuple[int, MapRule]:
    key = gene.strip().upper()
    if key in t.by_upper:
        return t.by_upper[key], "direct"
    parsed = parse_ensembl(key)
    if parsed is not None:
        stable, _ = parsed
        for name in (t.ensembl_to_name.get(stable), t.ensembl_to_approved.get(stable)):
            if name is None:
                continue
            if name in t.by_upper:
                return t.by_upper[name], "ensembl"
            approved = _approved_symbol(name, t)
            if approved in t.canonical_to_vocab:
                return t.canonical_to_vocab[approved], "ensembl"
        return -1, "unmapped"
    approved = _approved_symbol(key, t)
    if approved in t.canonical_to_vocab:
        return t.canonical_to_vocab[approved], "alias"
    return -1, "unmapped"


def _approved_symbol(upper_name: str, t: _Tables) -> str | None:
    if upper_name in t.approved:
        return upper_name
    return t.previous.get(upper_name) or t.alias.get(upper_name)


@cache
def _load_vocab(path: str) -> GeneVocab:
    df = pd.read_csv(path, sep="\t")
    if list(df.columns[:2]) != ["gene_name", "index"]:
        raise ValueError(f"{path}: expected columns 'gene_name\\tindex', got {list(df.columns)}")
    if not np.array_equal(df["index"].to_numpy(), np.arange(len(df))):
        raise ValueError(f"{path}: the index column must run 0..{len(df) - 1} in file order")
    return GeneVocab(df["gene_name"].astype(str).tolist())


@cache
def _hgnc_table() -> pd.DataFrame:
    cols = ["Status", "Approved symbol", "Alias symbol", "Previous symbol", "Ensembl gene ID"]
    df = pd.read_csv(datasets.fetch("hgnc"), usecols=cols, dtype=str)
    return df[df["Status"] == "Approved"]


def _build_tables(vocab: GeneVocab) -> _Tables:
    hgnc = _hgnc_table()
    approved_col = hgnc["Approved symbol"].str.upper()
    approved = frozenset(approved_col.dropna())

    def pairs(col: str) -> Iterable[tuple[str, str]]:
        sub = hgnc[col].notna()
        return zip(hgnc.loc[sub, col].str.upper(), approved_col[sub], strict=True)

    # A previous/alias symbol that is itself a current approved symbol names that gene.
    previous = {
        k: v for k, v in _unambiguous(pairs("Previous symbol")).items() if k not in approved
    }
    alias = {k: v for k, v in _unambiguous(pairs("Alias symbol")).items() if k not in approved}
    ens = hgnc["Ensembl gene ID"].notna()
    ensembl_to_approved = _unambiguous(
        zip(hgnc.loc[ens, "Ensembl gene ID"].str.upper(), approved_col[ens], strict=True)
    )

    gencode = pd.read_csv(
        datasets.fetch("gencode_id2name"), header=None, names=["id", "name"], dtype=str
    )
    ensembl_to_name = dict(zip(gencode["id"].str.upper(), gencode["name"].str.upper(), strict=True))

    by_upper = {n.upper(): i for i, n in enumerate(vocab.names)}
    tables = _Tables(
        by_upper=by_upper,
        canonical_to_vocab={},
        previous=previous,
        alias=alias,
        approved=approved,
        ensembl_to_name=ensembl_to_name,
        ensembl_to_approved=ensembl_to_approved,
    )
    # Each vocabulary entry is reachable through its approved symbol. An approved symbol that is
    # itself a vocabulary name keeps pointing there; otherwise the (unique) vocabulary entry whose
    # old name resolves to it. The __chrM twins are never canonical targets (module docstring).
    canonical: dict[str, set[int]] = defaultdict(set)
    for i, name in enumerate(vocab.names):
        if name.endswith(_MT_TWIN_SUFFIX):
            continue
        sym = _approved_symbol(name.upper(), tables)
        if sym is not None:
            canonical[sym].add(i)
    for sym, idxs in canonical.items():
        if sym in by_upper:
            tables.canonical_to_vocab[sym] = by_upper[sym]
        elif len(idxs) == 1:
            tables.canonical_to_vocab[sym] = next(iter(idxs))
    return tables


@dataclass(frozen=True)
class MappingReport:
    """Counts of a gene mapping, readable with ``print``."""

    n_input: int
    by_rule: dict[str, int]
    n_collisions: int  # vocabulary genes hit by more than one input gene
    n_collided_inputs: int  # input genes involved in those collisions
    collisions: dict[str, list[str]] = field(repr=False)  # vocab name -> input genes
    unmapped_examples: list[str] = field(repr=False)
    n_vocab_covered: int = 0
    foreign_ensembl: dict[str, int] = field(default_factory=dict)

    @property
    def n_mapped(self) -> int:
        return self.n_input - self.by_rule["unmapped"]

    @property
    def fraction_mapped(self) -> float:
        return self.n_mapped / self.n_input if self.n_input else 0.0

    def to_dict(self) -> dict:
        return {
            "n_input": self.n_input,
            "n_mapped": self.n_mapped,
            "fraction_mapped": round(self.fraction_mapped, 6),
            **{f"n_{k}": v for k, v in self.by_rule.items()},
            "n_collisions": self.n_collisions,
            "n_collided_inputs": self.n_collided_inputs,
            "n_vocab_covered": self.n_vocab_covered,
            "collisions": self.collisions,
            "unmapped_examples": self.unmapped_examples,
            "foreign_ensembl": self.foreign_ensembl,
        }

    def __str__(self) -> str:
        pct = (lambda n: f"{100 * n / self.n_input:5.1f}%") if self.n_input else (lambda n: "  -  ")
        lines = [f"gene mapping onto the {N_GENES:,}-gene vocabulary: {self.n_input:,} input genes"]
        for rule, label in (
            ("direct", "mapped directly (symbol)"),
            ("ensembl", "mapped via Ensembl id"),
            ("alias", "mapped via alias/previous symbol"),
            ("unmapped", "unmapped (dropped)"),
        ):
            lines.append(f"  {label:<34}{self.by_rule[rule]:>8,}  {pct(self.by_rule[rule])}")
        lines.append(f"  {'vocabulary genes covered':<34}{self.n_vocab_covered:>8,}")
        lines.append(
            f"  {'collisions (counts summed)':<34}{self.n_collisions:>8,}"
            f"  ({self.n_collided_inputs} input genes)"
        )
        for target, sources in list(self.collisions.items())[:5]:
            lines.append(f"    {target} <- {', '.join(sources)}")
        if self.unmapped_examples:
            lines.append(f"  unmapped e.g.: {', '.join(self.unmapped_examples[:8])}")
        return "\n".join(lines)


@dataclass(frozen=True)
class GeneMapping:
    """The result of :meth:`GeneVocab.map`: where each input gene goes.

    Attributes
    ----------
    index
        Vocabulary index per input gene, ``-1`` when unmapped.
    rules
        The rule that mapped each input gene (one of :data:`RULES`).
    """

    vocab: GeneVocab = field(repr=False)
    genes: tuple[str, ...] = field(repr=False)
    index: np.ndarray = field(repr=False)
    rules: np.ndarray = field(repr=False)
    n_case_changed: int = 0
    foreign_ensembl: dict[str, int] = field(default_factory=dict)
    n_mouse_style: int = 0  # case-changed symbols written the mouse way (Cd3e)

    @property
    def mapped(self) -> np.ndarray:
        """Boolean mask of input genes that map to the vocabulary."""
        return self.index >= 0

    @property
    def report(self) -> MappingReport:
        counts = Counter(self.rules.tolist())
        hits: dict[int, list[str]] = defaultdict(list)
        for gene, idx in zip(self.genes, self.index.tolist(), strict=True):
            if idx >= 0:
                hits[idx].append(gene)
        collisions = {self.vocab.names[i]: g for i, g in sorted(hits.items()) if len(g) > 1}
        unmapped = [g for g, r in zip(self.genes, self.rules, strict=True) if r == "unmapped"]
        return MappingReport(
            n_input=len(self.genes),
            by_rule={r: counts.get(r, 0) for r in RULES},
            n_collisions=len(collisions),
            n_collided_inputs=sum(len(g) for g in collisions.values()),
            collisions=collisions,
            unmapped_examples=unmapped[:20],
            n_vocab_covered=len(hits),
            foreign_ensembl=self.foreign_ensembl,
        )

    @property
    def exact(self) -> np.ndarray:
        """Boolean mask of input genes named exactly (case-sensitive) as their vocabulary gene."""
        names = np.asarray(self.vocab.names, dtype=object)
        genes = np.asarray(self.genes, dtype=object)
        return self.mapped & (genes == names[np.maximum(self.index, 0)])

    def exact_only(self) -> GeneMapping:
        """This mapping restricted to exact vocabulary names; every other input is unmapped.

        That is the official scFoundation column selection (``X_df[gene_list]``): no case
        folding, Ensembl ids or aliases.
        """
        keep = self.exact
        return dataclasses.replace(
            self,
            index=np.where(keep, self.index, -1),
            rules=np.where(keep, self.rules, "unmapped"),
            n_case_changed=0,
            n_mouse_style=0,
        )

    def matrix(self, dtype: np.dtype | type = np.float32) -> sp.csr_matrix:
        """Sparse (n_input × 19,264) 0/1 matrix; ``X @ M`` maps and sums collisions."""
        rows = np.flatnonzero(self.mapped)
        return sp.csr_matrix(
            (np.ones(len(rows), dtype=dtype), (rows, self.index[rows])),
            shape=(len(self.genes), len(self.vocab)),
        )

    def apply(self, X: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
        """Map a cells × input-genes count matrix onto the vocabulary (cells × 19,264, CSR).

        Counts of genes that share a vocabulary gene are summed; unmapped genes are dropped.
        Sparse input stays sparse; the result has sorted indices and no explicit zeros.
        """
        if X.shape[1] != len(self.genes):
            raise ValueError(
                f"matrix has {X.shape[1]} gene columns but the mapping was built for "
                f"{len(self.genes)} genes"
            )
        dtype = X.dtype if np.issubdtype(X.dtype, np.number) else np.float32
        Xs = sp.csr_matrix(X)
        out = sp.csr_matrix(Xs @ self.matrix(dtype=dtype))
        out.eliminate_zeros()
        out.sort_indices()
        return out


@lru_cache(maxsize=8)
def _mapping_cached(vocab: GeneVocab, genes: tuple[str, ...]) -> GeneMapping:
    return vocab.map(genes)


def gene_mapping(vocab: GeneVocab, gene_ids: Sequence[str]) -> GeneMapping:
    """Vocabulary mapping of a gene list, cached per process (sources repeat the same var)."""
    return _mapping_cached(vocab, tuple(str(g) for g in gene_ids))
