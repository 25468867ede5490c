"""Official weights give official results: scfm against the unmodified official scFoundation code.

An official model (the 0.1B layout at reduced width and depth, random weights) is built by the
official code, written as an official ``models.ckpt``, loaded through ``scfm`` and compared on 16
real Kang PBMC cells of different depths with the official ``get_embedding.py`` steps at batch
size 1. Tolerance: max |scfm − official| / max |official| < 1e-4 per cell, in fp32.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scfm
from scfm.data.genes import GeneVocab
from scfm.data.prepared import prepare
from scfm.inference.engine import InferenceEngine
from tests.official_reference import (
    cells_across_depths,
    load_official,
    max_rel_error,
    official_cell_embedding,
    official_config,
    official_expression,
    official_gene_embedding,
    official_gene_selection,
    official_rows,
    per_cell_error,
    random_official_model,
    save_official_checkpoint,
)

TOL = 1e-4
N_CELLS = 16


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """``(path to models.ckpt, official model, official flat config)``."""
    config = official_config()
    path = save_official_checkpoint(
        tmp_path_factory.mktemp("official") / "models.ckpt", random_official_model(config), config
    )
    model, flat = load_official(path, "cell")
    return path, model, flat


@pytest.fixture(scope="module")
def cells(kang_full) -> ad.AnnData:
    """16 real cells spread over the range of depths."""
    return cells_across_depths(kang_full, N_CELLS)


@pytest.fixture(scope="module")
def x_vocab(cells) -> np.ndarray:
    return official_gene_selection(cells)


@pytest.mark.parametrize("tgthighres", ["t4", "f1", "a0.5"])
@pytest.mark.parametrize("pool_type", ["all", "max"])
def test_cell_embeddings_match_the_official_code(official, cells, x_vocab, pool_type, tgthighres):
    path, model, flat = official
    rows = official_rows(x_vocab, tgthighres)
    expected = [official_cell_embedding(model, flat, r, pool_type) for r in rows]
    pool = ("S", "T", "max", "mean") if pool_type == "all" else ("max_all",)
    adata = cells.copy()
    out = scfm.embed(
        adata, str(path), gene_matching="exact", pool=pool, target_depth=tgthighres,
        device="cpu", progress=False,
    )  # fmt: skip
    assert out.shape == (N_CELLS, len(expected[0]))
    assert per_cell_error(out, expected) < TOL
    settings = adata.uns["scfm"]["X_scfm"]["settings"]
    assert settings["preset"] == "official" and settings["gene_matching"] == "exact"


def test_official_defaults_reproduce_get_embedding(official, cells, x_vocab):
    """No settings given: an official file embeds as get_embedding.py's defaults (t4, all)."""
    path, model, flat = official
    expected = [official_cell_embedding(model, flat, r) for r in official_rows(x_vocab, "t4")]
    adata = cells.copy()
    out = scfm.embed(adata, str(path), gene_matching="exact", device="cpu", progress=False)
    assert per_cell_error(out, expected) < TOL
    record = adata.uns["scfm"]["X_scfm"]
    assert record["settings"]["target_depth"] == "t4"
    assert record["settings"]["depth_total"] == "vocab_genes"
    assert record["settings"]["precision"] == "fp32"
    # the standard (alias / Ensembl) matching is the default and the record says what it adds
    scfm.embed(adata, str(path), device="cpu", progress=False, key_added="std")
    mapping = adata.uns["scfm"]["std"]["gene_mapping"]
    assert mapping["matching"] == "standard"
    assert mapping["n_added_beyond_exact"] == mapping["n_mapped"] - mapping["n_exact_names"] > 0


def test_gene_embeddings_and_expression_match_the_official_code(official, cells, x_vocab):
    path, _, flat = official
    gene_model, _ = load_official(path, "gene")
    rows = official_rows(x_vocab, "t4")
    expected_genes = [official_gene_embedding(gene_model, flat, r) for r in rows]
    expected_expr = [official_expression(gene_model, flat, r) for r in rows]

    g = scfm.gene_embeddings(
        cells, str(path), aggregate=None, gene_matching="exact", device="cpu", progress=False
    )
    assert g.values.shape == (N_CELLS, 19264, expected_genes[0].shape[1])
    assert per_cell_error(g.values, expected_genes) < TOL

    # decoder expression through the engine (all 19,264 genes, official T = 4)
    prepared = prepare(cells, gene_matching="exact")
    engine = InferenceEngine(scfm.load_model(path, variant="gene", device="cpu").module, "cpu")
    block = next(prepared.blocks("vocab_genes"))
    pred = engine.predict(block.batch(), depth="t4")
    assert per_cell_error(pred, expected_expr) < TOL

    # enhance at T = 4 (target total 10^4) gives the same values on the input genes, ≥ 0
    adata = cells.copy()
    out = scfm.enhance(
        adata, str(path), target_total=1e4, gene_matching="exact", device="cpu", progress=False
    )
    vocab = GeneVocab.load()
    cols = [j for j, gname in enumerate(adata.var_names) if gname in set(vocab.names)]
    idx = [vocab.index(adata.var_names[j]) for j in cols]
    expected = np.maximum(np.stack(expected_expr)[:, idx], 0.0)
    np.testing.assert_allclose(out[:, cols], expected, rtol=0, atol=TOL * np.abs(expected).max())


def test_batched_outputs_equal_batch_size_one(official, cells):
    path = str(official[0])
    one = scfm.embed(cells.copy(), path, batch_size=1, device="cpu", progress=False)
    many = scfm.embed(cells.copy(), path, batch_size=16, device="cpu", progress=False)
    assert max_rel_error(many, one) < 1e-5
    g1 = scfm.gene_embeddings(cells, path, aggregate=None, batch_size=1, progress=False)
    g4 = scfm.gene_embeddings(cells, path, aggregate=None, batch_size=4, progress=False)
    assert max_rel_error(g4.values, g1.values) < 1e-5


def test_declared_input_modes_match_the_official_code(official, cells, x_vocab):
    """pre_normalized T and A (single cells) and bulk input against the official modes."""
    path, model, flat = official
    totals = x_vocab.sum(axis=1)
    normalized = np.log1p(x_vocab / totals[:, None] * 1e4)
    vocab = GeneVocab.load()
    var = ad.AnnData(
        X=sp.csr_matrix(normalized.astype(np.float32)),
        obs={"total_counts": totals},
    )
    var.var_names = list(vocab.names)
    var.obs_names = [f"c{i}" for i in range(var.n_obs)]
    for mode in ("T", "A"):
        expected = [
            official_cell_embedding(model, flat, r)
            for r in official_rows(normalized, "t4", pre_normalized=mode, totals=totals)
        ]
        out = scfm.embed(
            var.copy(), str(path), pre_normalized=mode, gene_matching="exact", progress=False
        )
        assert per_cell_error(out, expected) < TOL, mode

    # bulk: pseudo-bulk samples of 4 cells each, counts; T = S = log10(sum of log values)
    bulk_counts = x_vocab.reshape(4, 4, -1).sum(axis=1)
    expected = [
        official_cell_embedding(model, flat, r)
        for r in official_rows(bulk_counts, input_type="bulk")
    ]
    bulk = ad.AnnData(X=sp.csr_matrix(bulk_counts.astype(np.float32)))
    bulk.var_names = list(vocab.names)
    bulk.obs_names = [f"s{i}" for i in range(4)]
    out = scfm.embed(bulk, str(path), pre_normalized="bulk", gene_matching="exact", progress=False)
    assert per_cell_error(out, expected) < TOL
    assert bulk.uns["scfm"]["X_scfm"]["settings"]["target_depth"] == "S (bulk)"
