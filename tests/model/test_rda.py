from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from scfm.data.packed import PackedCells
from scfm.model import rda
from scfm.model.config import N_GENES, PAD_POS, S_POS, T_POS
from scfm.model.rda import RDAConfig, collate, downsample, masked_mse, prepare_inference

NO_DOWNSAMPLING = RDAConfig(min_total_counts=float("inf"))
# every masked gene hidden from the encoder (no kept or random values): the pure masked objective
PURE_MASK = RDAConfig(replace_prob=1.0, random_value_prob=0.0)


def _cells(batch, out):
    """Per cell: encoder (gene ids, values) without T/S, T value, S value."""
    res = []
    for b in range(out.batch_size):
        valid = ~out.padding_mask[b]
        ids, vals = out.gene_ids[b][valid], out.values[b][valid]
        assert ids[-2] == T_POS and ids[-1] == S_POS  # genes, then T, then S
        res.append((ids[:-2], vals[:-2], vals[-2].item(), vals[-1].item()))
    return res


def test_downsample_preserves_expected_totals() -> None:
    rng = np.random.default_rng(0)
    cell = np.array([1, 2, 5, 10, 40, 200], dtype=np.float32)
    n_rep, rate = 4000, 0.3
    counts = np.tile(cell, n_rep)
    offsets = np.arange(n_rep + 1) * cell.size
    total = np.full(n_rep, cell.sum() + 500.0)  # 500 counts outside the vocabulary
    down, input_total = downsample(counts, offsets, total, np.full(n_rep, rate), rng)
    down = down.reshape(n_rep, cell.size)
    assert (down <= cell).all() and (down == np.rint(down)).all()
    # E[x'] = p·x and Var[x'] = x·p·(1-p), per gene and for the total (out-of-vocab included)
    se = np.sqrt(cell * rate * (1 - rate) / n_rep)
    assert np.all(np.abs(down.mean(0) - rate * cell) < 5 * se)
    assert_close(down.var(0), cell * rate * (1 - rate), rtol=0.12, atol=0.01, check_dtype=False)
    T = total[0]
    assert abs(input_total.mean() - rate * T) < 5 * np.sqrt(T * rate * (1 - rate) / n_rep)
    assert_close(input_total.var(), T * rate * (1 - rate), rtol=0.12, atol=0)


def test_collate_duplicates_or_downsamples_at_beta_rates() -> None:
    """Half the eligible cells are unchanged duplicates (T = S), half thinned at Beta(2, 2)."""
    batch = PackedCells(
        gene_idx=np.tile(np.arange(0, 2000, 10, dtype=np.int32), 800),
        counts=np.full(800 * 200, 25.0, dtype=np.float32),  # 5,000 counts in vocabulary
        offsets=np.arange(801, dtype=np.int64) * 200,
        total_counts=np.full(800, 6000.0),
    )
    out = collate(batch, RDAConfig(), generator=0)
    ratio = 10.0 ** (out.S - out.T).numpy().astype(np.float64)
    duplicate = ratio == 1.0
    assert abs(duplicate.mean() - 0.5) < 4 * np.sqrt(0.25 / 800)
    thinned = ratio[~duplicate]
    # Beta(2, 2): mean 1/2, variance 1/20 (the binomial noise on 6,000 counts is negligible)
    assert abs(thinned.mean() - 0.5) < 4 * np.sqrt(0.05 / thinned.size)
    assert abs(thinned.var() - 0.05) < 0.015
    assert_close(out.T, torch.full((800,), np.log10(6000.0), dtype=torch.float32))
    always = collate(batch, RDAConfig(downsample_prob=1.0), generator=0)
    assert (always.S < always.T).all()


def test_low_depth_rates_of_the_paper_evaluation_are_trained() -> None:
    """The paper evaluates enhancement from 1-20 % of the reads: Beta(2, 2) draws such rates
    for 10.4 % of the down-sampled cells (I_0.2(2, 2) - I_0.01(2, 2) = 0.1037)."""
    rates = rda.sample_rates(200_000, RDAConfig(), np.random.default_rng(0))
    low = ((rates >= 0.01) & (rates <= 0.2)).mean()
    assert abs(low - 0.1037) < 4 * np.sqrt(0.1037 * 0.8963 / rates.size)
    assert (rates < 0.05).mean() > 0.005  # 1-5 % too (expected 0.72 %)


def test_collate_shapes_and_invariants(loader_batch) -> None:
    batch = loader_batch(6, n_genes=(200, 600), seed=1)
    total = 50_000.0  # every cell eligible for down-sampling
    batch = dataclasses.replace(batch, total_counts=np.full(6, total), counts=batch.counts * 8)
    cfg = dataclasses.replace(PURE_MASK, downsample_prob=1.0)
    out = collate(batch, cfg, generator=np.random.default_rng(1))
    B, L = out.gene_ids.shape
    assert out.masked.shape == out.target.shape == (B, N_GENES)
    assert out.values.dtype == out.target.dtype == torch.float32
    assert (out.gene_ids[out.padding_mask] == PAD_POS).all()
    offsets = batch.offsets
    for b, (ids, vals, T, S) in enumerate(_cells(batch, out)):
        genes = batch.gene_idx[offsets[b] : offsets[b + 1]]
        counts = batch.counts[offsets[b] : offsets[b + 1]]
        # target: original counts normalised by the original total, zero elsewhere
        expected = np.zeros(N_GENES, dtype=np.float32)
        expected[genes] = np.log1p(counts / total * 1e4)
        assert_close(out.target[b], torch.from_numpy(expected))
        assert T == pytest.approx(np.log10(total)) and S < T
        # masked genes never reach the encoder; encoder genes are a sorted subset of the cell's
        assert not out.masked[b, ids].any()
        assert torch.all(ids[1:] > ids[:-1]) and np.isin(ids.numpy(), genes).all()
        # input values: a thinned cell (integer counts, at most the original) over its own total
        thinned = np.expm1(vals.numpy().astype(np.float64)) * 10.0**S / 1e4
        original = counts[np.searchsorted(genes, ids.numpy())]
        assert_close(thinned, np.rint(thinned), rtol=1e-4, atol=1e-3)
        assert (thinned >= 1 - 1e-3).all() and (thinned <= original + 1e-3).all()
    assert 0.02 < out.masked.float().mean().item() < 0.05


def test_mask_rates_without_downsampling(loader_batch) -> None:
    batch = loader_batch(8, n_genes=(400, 800), seed=2)
    cfg = dataclasses.replace(PURE_MASK, min_total_counts=float("inf"))
    out = collate(batch, cfg, generator=0)
    nz_total = np.diff(batch.offsets).sum()
    enc_genes = (~out.padding_mask).sum().item() - 2 * 8
    nz_masked = nz_total - enc_genes  # every nonzero gene is either in the encoder or masked
    assert abs(nz_masked / nz_total - 0.3) < 0.03
    zero_masked = out.masked.sum().item() - nz_masked
    assert abs(zero_masked / (8 * N_GENES - nz_total) - 0.03) < 0.003


def test_hidden_values_never_leak_into_encoder_inputs(loader_batch, tiny_model) -> None:
    batch = loader_batch(3, seed=3)
    out = collate(batch, NO_DOWNSAMPLING, generator=7)
    rows = np.repeat(np.arange(3), np.diff(batch.offsets))
    in_encoder = np.zeros((3, N_GENES), dtype=bool)
    for b, (ids, _, _, _) in enumerate(_cells(batch, out)):
        in_encoder[b, ids.numpy()] = True
    hidden = out.masked.numpy()[rows, batch.gene_idx] & ~in_encoder[rows, batch.gene_idx]
    assert hidden.any()
    # change the counts of exactly the hidden genes: the encoder input must not move a bit
    counts = batch.counts
    changed = dataclasses.replace(
        batch, counts=np.where(hidden, np.where(counts > 1, 1.0, 2.0), counts)
    )
    out2 = collate(changed, NO_DOWNSAMPLING, generator=7)
    assert torch.equal(out.masked, out2.masked)
    for name in ("gene_ids", "values", "padding_mask", "T", "S"):
        assert torch.equal(getattr(out, name), getattr(out2, name)), name
    assert not torch.equal(out.target, out2.target)
    with torch.no_grad():
        assert_close(
            tiny_model(*out.encoder_inputs(), out.masked),
            tiny_model(*out2.encoder_inputs(), out2.masked),
            rtol=0,
            atol=0,
        )


def test_masked_genes_are_hidden_kept_or_given_another_genes_value() -> None:
    """Official replace_prob 0.8 / random_token_prob 0.1: of the scored expressed genes, 72 %
    are hidden, 18 % keep their value, 10 % show another unmasked gene's value of the cell."""
    n_cells, n = 40, 1000
    counts = np.tile(np.arange(1, n + 1, dtype=np.float32), n_cells)  # one value per gene
    batch = PackedCells(
        gene_idx=np.tile(np.arange(0, 2 * n, 2, dtype=np.int32), n_cells),
        counts=counts,
        offsets=np.arange(n_cells + 1, dtype=np.int64) * n,
        total_counts=np.full(n_cells, float(counts[:n].sum())),
    )
    out = collate(batch, NO_DOWNSAMPLING, generator=0)
    own = np.log1p(np.arange(1, n + 1) / counts[:n].sum() * 1e4).astype(np.float32)
    hidden = kept = random = scored = 0
    for b, (ids, vals, _, _) in enumerate(_cells(batch, out)):
        genes = np.arange(0, 2 * n, 2)
        is_scored = out.masked[b, genes].numpy()
        pos = {int(g): i for i, g in enumerate(ids.numpy())}
        for j in np.flatnonzero(is_scored):
            scored += 1
            if int(genes[j]) not in pos:
                hidden += 1
            elif vals[pos[int(genes[j])]].item() == own[j]:
                kept += 1
            else:
                random += 1
                shown = vals[pos[int(genes[j])]].item()
                source = int(np.flatnonzero(own == shown)[0])
                assert not is_scored[source]  # drawn from an unmasked gene of the cell
    assert abs(scored / (n_cells * n) - 0.3) < 0.02
    for got, want in ((hidden, 0.72), (kept, 0.18), (random, 0.10)):
        assert abs(got / scored - want) < 4 * np.sqrt(want * (1 - want) / scored)


def test_encoder_input_is_capped_per_cell(loader_batch) -> None:
    batch = loader_batch(4, n_genes=(150, 300), seed=8)
    cfg = RDAConfig(min_total_counts=float("inf"), max_encoder_genes=100)
    out = collate(batch, cfg, generator=0)
    rows = np.repeat(np.arange(4), np.diff(batch.offsets))
    for b, (ids, _, _, _) in enumerate(_cells(batch, out)):
        assert len(ids) == 100  # every cell has more than 100 visible genes
        genes = batch.gene_idx[rows == b]
        left_out = np.setdiff1d(genes, ids.numpy())
        assert out.masked[b, left_out].all()  # what the cap hides is predicted and scored
    short = collate(batch, dataclasses.replace(cfg, max_encoder_genes=14998), generator=0)
    assert (~short.padding_mask).sum() > (~out.padding_mask).sum()


def test_cells_below_threshold_are_not_downsampled(loader_batch) -> None:
    batch = loader_batch(4, seed=4)  # totals of a few hundred counts < 1000
    out = collate(batch, RDAConfig(mask_nonzero_prob=0.0, mask_zero_prob=0.0), generator=0)
    assert_close(out.S, out.T)
    ref = prepare_inference(batch)
    for name in ("gene_ids", "values", "padding_mask", "T", "S"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    assert not out.masked.any()


def test_collate_is_reproducible_and_accepts_tensors(loader_batch) -> None:
    batch = loader_batch(3, seed=5)
    batch = dataclasses.replace(batch, total_counts=batch.total_counts + 2000)
    a = collate(batch, generator=11)
    as_tensors = PackedCells(
        *(
            torch.from_numpy(getattr(batch, f))
            for f in ("gene_idx", "counts", "offsets", "total_counts")
        )
    )
    b = collate(as_tensors, generator=11)
    c = collate(batch, generator=12)
    for name in ("gene_ids", "values", "masked", "target", "S"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.masked, c.masked)


def test_prepare_inference_values_and_target_depth(loader_batch) -> None:
    batch = loader_batch(2, seed=6)
    out = prepare_inference(batch, target_T=4.5)
    for b, (ids, vals, T, S) in enumerate(_cells(batch, out)):
        lo, hi = batch.offsets[b], batch.offsets[b + 1]
        total = batch.total_counts[b]
        assert torch.equal(ids, torch.from_numpy(batch.gene_idx[lo:hi]).long())
        expected = np.log1p(batch.counts[lo:hi] / total * 1e4).astype(np.float32)
        assert_close(vals, torch.from_numpy(expected))
        assert T == 4.5 and S == pytest.approx(np.log10(total))
    assert out.masked is None and out.target is None


def test_malformed_batches_raise(loader_batch) -> None:
    batch = loader_batch(2)
    with pytest.raises(ValueError, match="offsets"):
        dataclasses.replace(batch, offsets=batch.offsets[:-1])
    with pytest.raises(ValueError, match="vocabulary"):
        dataclasses.replace(batch, gene_idx=batch.gene_idx + N_GENES)
    with pytest.raises(TypeError, match="expected PackedCells"):
        collate({"gene_idx": batch.gene_idx}, generator=0)


def test_masked_mse_counts_masked_positions_only() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 5.0, 0.0]])
    masked = torch.tensor([[False, True, True], [True, False, False]])
    assert_close(masked_mse(pred, target, masked), torch.tensor((4 + 9 + 1) / 3))
    assert masked_mse(pred, target, torch.zeros_like(masked)).item() == 0.0


def test_batch_to_device_keeps_fields(loader_batch) -> None:
    out = collate(loader_batch(2), generator=0).to("cpu")
    assert isinstance(out, rda.CellBatch) and out.masked is not None
