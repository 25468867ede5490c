from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from scfm.model import rda
from scfm.model.config import N_GENES, S_POS, T_POS, ModelConfig
from scfm.model.rda import RDAConfig, collate, masked_mse, prepare_inference
from scfm.model.xtrimogene import XTrimoGene

TOL = dict(rtol=1e-4, atol=1e-5)  # batched vs single: same math, different matmul shapes


def _pretrain_batch(loader_batch, n_cells: int = 3, seed: int = 0) -> rda.CellBatch:
    batch = loader_batch(n_cells, seed=seed)
    # eligible for down-sampling
    batch = dataclasses.replace(batch, total_counts=batch.total_counts + 1500)
    return collate(batch, RDAConfig(), generator=seed)


def _single(b: rda.CellBatch, i: int, extra_pad: int = 0) -> tuple[torch.Tensor, ...]:
    """Cell i alone, trimmed to its own length, optionally with extra padding columns."""
    n = int((~b.padding_mask[i]).sum())
    ids = torch.nn.functional.pad(b.gene_ids[i : i + 1, :n], (0, extra_pad), value=19266)
    vals = torch.nn.functional.pad(b.values[i : i + 1, :n], (0, extra_pad), value=123.0)
    pad = torch.nn.functional.pad(b.padding_mask[i : i + 1, :n], (0, extra_pad), value=True)
    return ids, vals, pad


def test_output_shapes(loader_batch, tiny_model) -> None:
    b = _pretrain_batch(loader_batch)
    B, L = b.gene_ids.shape
    with torch.no_grad():
        assert tiny_model.encode(*b.encoder_inputs()).shape == (B, L, 32)
        assert tiny_model(*b.encoder_inputs(), b.masked).shape == (B, N_GENES)
        assert tiny_model.embed_cells(*b.encoder_inputs()).shape == (B, 4 * 32)
        assert tiny_model.gene_embeddings(*b.encoder_inputs()).shape == (B, N_GENES, 16)
        assert tiny_model.predict_expression(*b.encoder_inputs(), 4.0).shape == (B, N_GENES)


@pytest.mark.parametrize(
    ("attention", "train_mode"), [("performer", False), ("performer", True), ("sdpa", False)]
)
def test_cell_output_independent_of_batch_and_padding(loader_batch, attention, train_mode) -> None:
    # train mode runs the encoder's standard path, eval its fused fast path: check both
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name("tiny", dec_attention=attention)).train(train_mode)
    n_cells = 2 if attention == "sdpa" else 3  # exact attention over 19,266 positions is slow
    b = _pretrain_batch(loader_batch, n_cells=n_cells, seed=1)
    assert b.padding_mask.any()  # cells of different lengths: real padding in the batch
    with torch.no_grad():
        pred = model(*b.encoder_inputs(), b.masked)
        emb = model.embed_cells(*b.encoder_inputs())
        for i in range(n_cells):
            single = _single(b, i, extra_pad=7)  # alone, with its own garbage-valued padding
            assert_close(model(*single, b.masked[i : i + 1])[0], pred[i], **TOL)
            assert_close(model.embed_cells(*single)[0], emb[i], **TOL)
            assert_close(model.embed_cells(*_single(b, i))[0], emb[i], **TOL)


def test_embed_cells_is_s_t_max_mean_of_gene_tokens(loader_batch, tiny_model) -> None:
    b = prepare_inference(loader_batch(2, seed=2))
    with torch.no_grad():
        emb = tiny_model.embed_cells(*b.encoder_inputs())
        h = tiny_model.encode(*b.encoder_inputs())
    for i in range(2):
        ids = b.gene_ids[i][~b.padding_mask[i]]
        hi = h[i][~b.padding_mask[i]]
        genes = hi[ids < N_GENES]
        expected = torch.cat(
            [hi[ids == S_POS][0], hi[ids == T_POS][0], genes.amax(0), genes.mean(0)]
        )
        assert_close(emb[i], expected)


def test_predict_expression_sets_the_t_token(loader_batch, tiny_model) -> None:
    raw = loader_batch(2, seed=3)
    b = prepare_inference(raw)
    with torch.no_grad():
        same_depth = tiny_model.predict_expression(*b.encoder_inputs())
        deeper = tiny_model.predict_expression(*b.encoder_inputs(), target_T=b.S + 1)
        prepared = prepare_inference(raw, target_T=(b.S + 1).numpy())
        reference = tiny_model(*prepared.encoder_inputs())
    assert_close(deeper, reference)
    assert (deeper - same_depth).abs().max() > 1e-5  # T reaches the prediction


def test_gradients_reach_every_parameter_but_padding(loader_batch) -> None:
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name("tiny")).train()
    b = _pretrain_batch(loader_batch, seed=4)
    assert b.padding_mask.any() and b.masked.any()
    masked_mse(model(*b.encoder_inputs(), b.masked), b.target, b.masked).backward()
    for name, p in model.named_parameters():
        if name == "token_emb.emb_pad.weight":
            # padding must not influence any output, so its vector gets exactly no gradient
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
        else:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
            assert torch.isfinite(p.grad).all(), name


def test_gradient_checkpointing_gives_same_gradients(loader_batch) -> None:
    b = _pretrain_batch(loader_batch, n_cells=2, seed=5)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = XTrimoGene(ModelConfig.from_name("tiny", grad_checkpoint=ckpt)).train()
        masked_mse(model(*b.encoder_inputs(), b.masked), b.target, b.masked).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_tiny_model_overfits_a_small_batch(loader_batch) -> None:
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name("tiny")).train()
    b = collate(loader_batch(2, seed=0), RDAConfig(), generator=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):  # measured: loss / 31 by step 60 (/ 14 at 50)
        loss = masked_mse(model(*b.encoder_inputs(), b.masked), b.target, b.masked)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_bf16_autocast_on_cpu(loader_batch, tiny_model) -> None:
    b = _pretrain_batch(loader_batch, n_cells=2, seed=6)
    with torch.no_grad():
        ref = tiny_model(*b.encoder_inputs(), b.masked)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_model(*b.encoder_inputs(), b.masked)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_compiles_as_one_graph(loader_batch) -> None:
    # fullgraph: no graph breaks (static shapes, no boolean indexing, no data-dependent Python);
    # aot_eager traces forward and backward without needing a C++ toolchain for inductor
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name("tiny")).train()
    b = _pretrain_batch(loader_batch, n_cells=2, seed=9)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    losses = []
    for fn in (model, compiled):
        model.zero_grad()
        loss = masked_mse(fn(*b.encoder_inputs(), b.masked), b.target, b.masked)
        loss.backward()
        losses.append((loss.detach(), model.to_final.weight.grad.clone()))
    assert_close(losses[1][0], losses[0][0])
    assert_close(losses[1][1], losses[0][1])


def test_redraw_projections_changes_decoder_only(loader_batch, tiny_model) -> None:
    b = prepare_inference(loader_batch(1, seed=7))
    with torch.no_grad():
        before = tiny_model.predict_expression(*b.encoder_inputs())
        emb = tiny_model.embed_cells(*b.encoder_inputs())
        tiny_model.redraw_projections(torch.Generator().manual_seed(1))
        assert not torch.equal(tiny_model.predict_expression(*b.encoder_inputs()), before)
        assert torch.equal(tiny_model.embed_cells(*b.encoder_inputs()), emb)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(loader_batch, tiny_model) -> None:
    b = _pretrain_batch(loader_batch, n_cells=2, seed=8)
    with torch.no_grad():
        ref = tiny_model(*b.encoder_inputs(), b.masked)
        gpu = tiny_model.to("cuda")(*b.to("cuda").encoder_inputs(), b.masked.cuda())
    assert_close(gpu.cpu(), ref, rtol=1e-3, atol=1e-4)
