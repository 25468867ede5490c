"""scfm.embed: values against the model's own embed_cells, batching invariance, input kinds."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scfm
from scfm.data.genes import GeneVocab
from scfm.data.validate import InputValidationError
from scfm.model.rda import prepare_inference
from tests.fixtures_data import pack_rows

ATOL = 2e-5  # fp32, different padding / kernels between batch shapes


def _reference(model, adata, target_T=None) -> np.ndarray:
    """One cell per forward through XTrimoGene.embed_cells: an independent implementation."""
    vocab_X = GeneVocab.load().map(adata.var_names).apply(adata.X)
    totals = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()  # all input genes
    out = []
    with torch.no_grad():
        for i in range(adata.n_obs):
            batch = pack_rows(vocab_X[i], totals[i : i + 1])
            T = target_T[i] if np.ndim(target_T) else target_T
            cells = prepare_inference(batch, target_T=T)
            out.append(model.embed_cells(*cells.encoder_inputs()).numpy()[0])
    return np.stack(out)


def test_batched_embedding_equals_one_cell_at_a_time(kang, tiny_model) -> None:
    out = scfm.embed(kang, tiny_model, batch_size=16, progress=False)
    assert out.shape == (kang.n_obs, 4 * tiny_model.cfg.enc_dim) and out.dtype == np.float32
    assert adata_obsm_is(kang, "X_scfm", out)
    np.testing.assert_allclose(out, _reference(tiny_model, kang), atol=ATOL, rtol=0)
    # the cells really differ: a test of equal rows would also pass for a constant output
    assert np.linalg.norm(out - out.mean(axis=0), axis=1).min() > 1e-3


def adata_obsm_is(adata, key: str, value: np.ndarray) -> bool:
    return key in adata.obsm and np.array_equal(adata.obsm[key], value)


def test_independent_of_batch_composition_and_order(kang, tiny_model) -> None:
    base = scfm.embed(kang, tiny_model, batch_size=48, progress=False)
    perm = np.random.default_rng(0).permutation(kang.n_obs)
    shuffled = kang[perm].copy()
    for kw in ({"batch_size": 1}, {"batch_size": 5}, {"batch_size": 64, "max_tokens": 1500}):
        out = scfm.embed(shuffled, tiny_model, progress=False, block_rows=20, **kw)
        np.testing.assert_allclose(out, base[perm], atol=ATOL, rtol=0, err_msg=str(kw))


def test_sparse_dense_csc_and_backed_inputs_agree(kang, tiny_model, tmp_path) -> None:
    # same blocks, so the same batches: results must be bit-identical
    ref = scfm.embed(kang, tiny_model, progress=False, block_rows=17)
    dense = ad.AnnData(X=kang.X.toarray(), obs=kang.obs, var=kang.var)
    csc = ad.AnnData(X=sp.csc_matrix(kang.X), obs=kang.obs, var=kang.var)
    path = tmp_path / "kang.h5ad"
    kang.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    for name, adata in (("dense", dense), ("csc", csc), ("backed", backed)):
        out = scfm.embed(adata, tiny_model, progress=False, block_rows=17)
        np.testing.assert_array_equal(out, ref, err_msg=name)
    backed.file.close()


def test_model_mode_is_restored(kang, tiny_model) -> None:
    tiny_model.train()
    try:
        scfm.embed(kang[:4].copy(), tiny_model, progress=False)
        assert tiny_model.training  # a model mid-training stays in training mode
    finally:
        tiny_model.eval()


def test_counts_in_a_layer(kang, tiny_model) -> None:
    ref = scfm.embed(kang, tiny_model, progress=False)
    layered = ad.AnnData(
        X=sp.csr_matrix(np.log1p(kang.X.toarray())),
        obs=kang.obs,
        var=kang.var,
        layers={"counts": kang.X},
    )
    with pytest.raises(InputValidationError, match="non-integer values.*log-normalized"):
        scfm.embed(layered, tiny_model, progress=False)
    out = scfm.embed(layered, tiny_model, layer="counts", progress=False)
    np.testing.assert_array_equal(out, ref)
    assert layered.uns["scfm"]["X_scfm"]["settings"]["layer"] == "counts"
    # "raw" means adata.raw, with the genes of .raw (here a subset that drops one gene)
    with pytest.raises(InputValidationError, match="layer='raw' means adata.raw.*no .raw"):
        scfm.embed(layered, tiny_model, layer="raw", progress=False)
    counts = ad.AnnData(X=kang.X, obs=kang.obs, var=kang.var)
    layered.raw = counts[:, 1:]
    out = scfm.embed(layered, tiny_model, layer="raw", progress=False)
    np.testing.assert_array_equal(out, scfm.embed(counts[:, 1:].copy(), tiny_model, progress=False))


def test_pool_parts_and_target_depth(kang, tiny_model) -> None:
    E = tiny_model.cfg.enc_dim
    full = scfm.embed(kang, tiny_model, progress=False)
    mean = scfm.embed(kang, tiny_model, pool=("mean",), key_added="X_mean", progress=False)
    np.testing.assert_allclose(mean, full[:, 3 * E :], atol=ATOL, rtol=0)
    swapped = scfm.embed(kang, tiny_model, pool=("max", "S"), key_added="X_2", progress=False)
    np.testing.assert_allclose(swapped[:, :E], full[:, 2 * E : 3 * E], atol=ATOL, rtol=0)
    np.testing.assert_allclose(swapped[:, E:], full[:, :E], atol=ATOL, rtol=0)
    assert {"X_scfm", "X_mean", "X_2"} <= set(kang.obsm)
    assert set(kang.uns["scfm"]) == {"X_scfm", "X_mean", "X_2"}

    # official T conventions: f1 and a0 are T = S; t4 sets T = 4 for every cell
    for same in ("f1", "a0"):
        out = scfm.embed(kang, tiny_model, target_depth=same, key_added="t", progress=False)
        np.testing.assert_allclose(out, full, atol=ATOL, rtol=0)
    t4 = scfm.embed(kang, tiny_model, target_depth="t4", key_added="t", progress=False)
    np.testing.assert_allclose(t4, _reference(tiny_model, kang, target_T=4.0), atol=ATOL, rtol=0)
    assert np.abs(t4[:, E : 2 * E] - full[:, E : 2 * E]).max() > 1e-3  # the T state moved
    with pytest.raises(ValueError, match="not understood"):
        scfm.embed(kang, tiny_model, target_depth="x4", progress=False)
    with pytest.raises(ValueError, match="pool must be"):
        scfm.embed(kang, tiny_model, pool=("mean", "median"), progress=False)


def test_per_cell_target_depths_follow_their_cells(kang, tiny_model) -> None:
    """A per-cell T array is applied by cell, not by the length-sorted batch order."""
    T = np.random.default_rng(0).uniform(3.0, 5.0, kang.n_obs)
    out = scfm.embed(
        kang, tiny_model, target_depth=T, batch_size=8, block_rows=16, progress=False
    )  # 3 blocks, several length-sorted batches each
    np.testing.assert_allclose(out, _reference(tiny_model, kang, target_T=T), atol=ATOL, rtol=0)
    assert (
        kang.uns["scfm"]["X_scfm"]["settings"]["target_depth"] == f"per-cell ({kang.n_obs} values)"
    )
    with pytest.raises(ValueError, match="one value per cell"):
        scfm.embed(kang, tiny_model, target_depth=T[:-1], progress=False)


def test_record_in_uns_is_h5ad_writable(kang, tiny_checkpoint, tmp_path) -> None:
    out = scfm.embed(kang, str(tiny_checkpoint), device="cpu", progress=False)
    record = kang.uns["scfm"]["X_scfm"]
    assert record["model"]["name"] == "tiny"
    assert record["model"]["kind"] == "scfm-checkpoint"
    assert record["model"]["source"] == str(tiny_checkpoint)
    assert record["settings"]["pool"] == ["S", "T", "max", "mean"]
    assert record["settings"]["device"] == "cpu" and record["settings"]["precision"] == "fp32"
    assert record["gene_mapping"]["n_input"] == kang.n_vars
    assert record["gene_mapping"]["n_mapped"] == 6146  # 5,805 direct + 341 alias (Kang)
    assert record["embedding_dim"] == out.shape[1]
    kang.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scfm"], out)
    assert back.uns["scfm"]["X_scfm"]["model"]["name"] == "tiny"


def test_bad_inputs_raise_validation_errors(kang, tiny_model) -> None:
    normalized = ad.AnnData(
        X=kang.X.multiply(1 / kang.X.sum(axis=1)).tocsr() * 1e4, obs=kang.obs, var=kang.var
    )
    with pytest.raises(InputValidationError, match="non-integer values"):
        scfm.embed(normalized, tiny_model, progress=False)
    negative = ad.AnnData(X=kang.X.toarray() - 1, obs=kang.obs, var=kang.var)
    with pytest.raises(InputValidationError, match="negative values"):
        scfm.embed(negative, tiny_model, progress=False)
    mouse = kang.copy()
    mouse.var_names = [g.capitalize() for g in kang.var_names]
    with pytest.raises(InputValidationError, match="mouse symbols"):
        scfm.embed(mouse, tiny_model, progress=False)
    with pytest.raises(InputValidationError, match="no layer 'counts'"):
        scfm.embed(kang, tiny_model, layer="counts", progress=False)
    assert "X_scfm" not in kang.obsm  # nothing written on failure


def test_lazy_top_level_exports() -> None:
    import subprocess
    import sys

    import scfm.inference
    import scfm.inference.embed  # binds the submodule; the function must stay visible

    assert scfm.inference.embed is scfm.embed and scfm.embed.__name__ == "embed"
    from scfm.inference import embed, enhance, gene_embeddings, load_model

    assert all(callable(f) for f in (embed, enhance, gene_embeddings, load_model))
    code = "import sys, scfm, scfm.inference; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
