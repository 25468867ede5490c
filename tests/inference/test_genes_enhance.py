"""Gene embeddings and read-depth enhancement against direct calls of the model."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pytest
import torch

import scfm
from scfm.data.genes import GeneVocab
from scfm.model.config import T_POS
from scfm.model.rda import depth_token, prepare_inference
from tests.fixtures_data import pack_rows

N = 6  # the decoder spans all 19,266 positions per cell: keep it to a few cells
ATOL = 2e-5


@pytest.fixture
def few(kang):
    return kang[:N].copy()


@pytest.fixture(scope="module")
def depth_model(tiny_model):
    """The tiny model with a loud T position: every decoder query attends mostly to the T token.

    A randomly initialised decoder barely looks at 1 of 19,266 keys (T moves predictions by
    ~1e-6); a pretrained one learns to. Scaling T's gene embedding makes the effect of the depth
    token large enough to test its semantics.
    """
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.pos_emb.weight[T_POS] *= 40
    return model


def _direct(model, adata, fn):
    """Per cell: the model method on a one-cell batch built by the test's own packing."""
    vocab_X = GeneVocab.load().map(adata.var_names).apply(adata.X)
    totals = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    out = []
    with torch.no_grad():
        for i in range(adata.n_obs):
            batch = pack_rows(vocab_X[i], totals[i : i + 1])
            out.append(fn(prepare_inference(batch), totals[i]))
    return np.stack(out)


def test_gene_embeddings_per_cell_and_group(few, tiny_model) -> None:
    vocab = GeneVocab.load()
    genes = ["MS4A1", "CD3E", "LYZ", "MARCH8"]  # MARCH8: previous symbol of vocabulary MARCHF8
    idx = [vocab.index(g) for g in ("MS4A1", "CD3E", "LYZ", "MARCHF8")]
    per_cell = scfm.gene_embeddings(
        few, tiny_model, genes=genes, aggregate=None, batch_size=4, progress=False
    )
    assert per_cell.values.shape == (N, 4, tiny_model.cfg.dec_dim)
    assert per_cell.genes == ["MS4A1", "CD3E", "LYZ", "MARCHF8"]
    assert per_cell.cells == list(few.obs_names)
    ref = _direct(
        tiny_model, few, lambda c, _: tiny_model.gene_embeddings(*c.encoder_inputs())[0, idx]
    )
    np.testing.assert_allclose(per_cell.values, ref.astype(np.float32), atol=ATOL, rtol=0)
    assert np.abs(ref[0] - ref[1]).max() > 1e-4  # context-specific: cells differ

    group = few.obs_names[[1, 3, 4]]
    for cells in (group, np.array([4, 1, 3]), few.obs_names.isin(group)):
        mean = scfm.gene_embeddings(few, tiny_model, cells=cells, genes=genes, progress=False)
        np.testing.assert_allclose(mean.values, ref[[1, 3, 4]].mean(axis=0), atol=ATOL, rtol=0)
        assert mean.cells == list(group)
    frame = mean.to_dataframe()
    assert list(frame.index) == per_cell.genes and frame.shape == (4, tiny_model.cfg.dec_dim)

    with pytest.raises(ValueError, match="not in the 19,264-gene vocabulary.*NOT_A_GENE"):
        scfm.gene_embeddings(few, tiny_model, genes=["CD3E", "NOT_A_GENE"], progress=False)
    with pytest.raises(ValueError, match="cells not in adata.obs_names"):
        scfm.gene_embeddings(few, tiny_model, cells=["nope"], progress=False)


def test_enhance_matches_model_prediction_at_higher_depth(few, depth_model) -> None:
    tiny_model = depth_model
    out = scfm.enhance(few, tiny_model, fold=10, batch_size=4, progress=False)
    assert out.shape == few.shape and out.dtype == np.float32
    assert np.array_equal(few.layers["scfm_enhanced"], out)
    assert (out >= 0).all()

    mapping = GeneVocab.load().map(few.var_names)
    pred = _direct(
        tiny_model,
        few,
        lambda c, total: tiny_model.predict_expression(
            *c.encoder_inputs(), target_T=float(depth_token(np.array([total]))[0] + 1.0)
        )[0].numpy(),
    )
    mapped = mapping.index >= 0
    expected = np.maximum(pred[:, mapping.index[mapped]], 0)
    np.testing.assert_allclose(out[:, mapped], expected, atol=ATOL, rtol=0)
    assert (out[:, ~mapped] == 0).all()  # the model knows nothing of unmapped genes

    record = few.uns["scfm"]["scfm_enhanced"]
    assert record["depth"]["mean_T"] == pytest.approx(record["depth"]["mean_S"] + 1, abs=1e-5)
    assert record["settings"]["fold"] == 10.0

    # the depth token matters: same input at T = S gives another profile
    same_depth = scfm.enhance(few, tiny_model, fold=1, key_added="same", progress=False)
    assert np.abs(same_depth - out).max() > 0.01  # 500x the tolerance
    below = _direct(  # and T = S + 1 is what the model was asked for, not T = S
        tiny_model,
        few,
        lambda c, _: tiny_model.predict_expression(*c.encoder_inputs())[0].numpy(),
    )
    assert np.abs(np.maximum(below[:, mapping.index[mapped]], 0) - out[:, mapped]).max() > 0.01
    # fold=10 is target_total = 10 × each cell's total
    totals = np.asarray(few.X.sum(axis=1)).ravel()
    by_total = scfm.enhance(
        few, tiny_model, target_total=10 * totals, key_added="t", progress=False
    )
    np.testing.assert_allclose(by_total, out, atol=ATOL, rtol=0)
    # per-cell targets over several row blocks (2 cells each) go to their own cells
    blocks = scfm.enhance(
        few, tiny_model, target_total=10 * totals, block_rows=2, key_added="b", progress=False
    )
    np.testing.assert_allclose(blocks, out, atol=ATOL, rtol=0)


def test_enhance_counts_output_and_errors(few, depth_model) -> None:
    tiny_model = depth_model
    log1p = scfm.enhance(few, tiny_model, target_total=1e5, progress=False)
    counts = scfm.enhance(
        few, tiny_model, target_total=1e5, output="counts", key_added="c", progress=False
    )
    np.testing.assert_allclose(counts, np.expm1(log1p) * 1e5 / 1e4, rtol=1e-5, atol=1e-5)
    assert few.uns["scfm"]["c"]["settings"]["target_total"] == 1e5

    with pytest.raises(ValueError, match="exactly one of target_total"):
        scfm.enhance(few, tiny_model, progress=False)
    with pytest.raises(ValueError, match="exactly one of target_total"):
        scfm.enhance(few, tiny_model, fold=2, target_total=1e4, progress=False)
    with pytest.raises(ValueError, match="fold must be a positive number"):
        scfm.enhance(few, tiny_model, fold=0, progress=False)
    with pytest.raises(ValueError, match="output must be"):
        scfm.enhance(few, tiny_model, fold=2, output="tpm", progress=False)


def test_enhance_splits_colliding_genes_without_double_counting(few, depth_model) -> None:
    """Two input genes on one vocabulary gene share its prediction by their counts."""
    keep = [g for g in few.var_names if g not in ("MARCH8", "MARCHF8")]
    base = few[:, keep].X.toarray()
    extra = np.random.default_rng(0).integers(0, 5, size=(few.n_obs, 2))
    extra[0] = 0  # a cell that saw neither gene: equal shares
    split_in = ad.AnnData(X=np.hstack([base, extra]).astype(np.float32), obs=few.obs.copy())
    split_in.var_names = [*keep, "MARCH8", "MARCHF8"]  # previous and current symbol of one gene
    merged_in = ad.AnnData(
        X=np.hstack([base, extra.sum(axis=1, keepdims=True)]).astype(np.float32),
        obs=few.obs.copy(),
    )
    merged_in.var_names = [*keep, "MARCHF8"]
    model = copy.deepcopy(depth_model)
    with torch.no_grad():
        model.to_final.bias += 2.0  # positive predictions: nothing is clipped at zero
    out = scfm.enhance(split_in, model, fold=10, output="counts", progress=False)
    merged = scfm.enhance(merged_in, model, fold=10, output="counts", progress=False)
    a, b = out[:, -2], out[:, -1]
    np.testing.assert_allclose(a + b, merged[:, -1], rtol=1e-5)  # counted once, not twice
    np.testing.assert_allclose(out[:, :-2], merged[:, :-1], rtol=1e-6)
    seen = extra.sum(axis=1) > 0
    np.testing.assert_allclose(
        a[seen] / (a + b)[seen], extra[seen, 0] / extra[seen].sum(1), rtol=1e-5
    )
    np.testing.assert_allclose(a[~seen], b[~seen], rtol=1e-6)
    assert split_in.uns["scfm"]["scfm_enhanced"]["depth"]["n_collided_input_genes"] == 2


def test_zero_genes_can_enter_the_decoder_masked(few, depth_model) -> None:
    from scfm.inference.engine import zero_mask

    ids = torch.tensor([[5, 9, T_POS, T_POS + 1], [7, T_POS, T_POS + 1, 19266]])
    pad = torch.tensor([[False, False, False, False], [False, False, False, True]])
    m = zero_mask(ids, pad)
    assert m.shape == (2, 19264)
    assert not m[0, 5] and not m[0, 9] and m[0, 7] and not m[1, 7] and m[1, 5]
    assert int(m.sum()) == 2 * 19264 - 3
    plain = scfm.enhance(few, depth_model, fold=10, progress=False)
    masked = scfm.enhance(
        few, depth_model, fold=10, mask_zero_genes=True, key_added="m", progress=False
    )
    assert np.abs(masked - plain).max() > 1e-3  # the decoder sees other inputs
    assert few.uns["scfm"]["m"]["settings"]["mask_zero_genes"] is True


def test_enhance_refuses_backed_anndata(few, tiny_model, tmp_path) -> None:
    few.write_h5ad(tmp_path / "few.h5ad")
    backed = ad.read_h5ad(tmp_path / "few.h5ad", backed="r")
    with pytest.raises(ValueError, match="backed AnnData.*to_memory"):
        scfm.enhance(backed, tiny_model, fold=10, progress=False)
    backed.file.close()
