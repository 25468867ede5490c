from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scfm.model import XTrimoGene
from scfm.model.config import ModelConfig
from scfm.model.rda import RDAConfig
from scfm.train.config import PretrainConfig, TrainArgs
from scfm.train.loop import (
    TrainState,
    fit,
    micro_batches,
    train_step,
    validate,
    validation_metrics,
    validation_sums,
)
from scfm.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from tests.fixtures_data import pack_rows


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup_steps=10, max_steps=110, min_ratio=0.1) for s in range(120)]
    np.testing.assert_allclose(f[:10], np.arange(1, 11) / 10)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.55)  # half-way through the cosine
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_no_weight_decay_on_norms_biases_and_tables():
    model = XTrimoGene(ModelConfig.from_name("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "pos_emb.weight" in no_decay_names and "token_emb.emb.weight" in no_decay_names
    assert all(p.ndim == 2 for p in decay["params"])
    assert not any(names[id(p)].endswith(("bias", "norm.weight")) for p in decay["params"])
    n_all = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_all


def test_config_yaml_round_trip_and_overrides(tmp_path):
    cfg = PretrainConfig.load(overrides=["model=3m", "train.lr=3e-4", "data.rda.beta_a=3"])
    assert cfg.model == "3m" and cfg.train.lr == 3e-4 and cfg.data.rda.beta_a == 3
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = PretrainConfig.load(path)
    assert again == cfg
    with pytest.raises(ValueError, match=r"unknown config keys \['train.learning_rate'\]"):
        PretrainConfig.load(overrides=["train.learning_rate=1"])
    with pytest.raises(KeyError, match="unknown model preset"):
        PretrainConfig.load(overrides=["model=7b"])
    bad = PretrainConfig.load(overrides=["train.global_batch_size=10", "data.micro_batch_size=4"])
    with pytest.raises(ValueError, match="not a multiple"):
        _ = bad.grad_accum_steps


def test_tiny_model_learns_real_cells(kang_vocab_counts):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X = kang_vocab_counts[:48]
    batches = [pack_rows(X[i : i + 8]) for i in range(0, 48, 8)]
    val = [pack_rows(kang_vocab_counts[100:116])]
    model = XTrimoGene(ModelConfig.from_name("tiny"))
    args = TrainArgs(max_steps=12, lr=1e-2, warmup_steps=3)
    opt = build_optimizer(model, args)
    sched = build_scheduler(opt, args)
    rda = RDAConfig()
    cpu = torch.device("cpu")
    before = validate(model, val, rda, device=cpu)
    losses = []
    for step in range(args.max_steps):
        mbs = micro_batches(iter(batches[step % 6 : step % 6 + 1]), rda, rng, 1)
        res = train_step(model, mbs, opt, sched, device=cpu, grad_clip=1.0)
        assert res.cells == 8 and res.tokens > 8 * 2
        losses.append(res.loss)
    after = validate(model, val, rda, device=cpu)
    assert all(math.isfinite(v) for v in (*before.values(), *after.values()))
    # Measured (12 steps): last-5 / first-3 train loss 0.83, val loss x 0.74, RDE MAE 2.61 -> 1.13
    # (24 steps: 0.78, x 0.68, 2.61 -> 0.72).
    assert np.mean(losses[-5:]) < 0.92 * np.mean(losses[:3])
    assert after["val_loss"] < 0.9 * before["val_loss"]
    assert after["val_rde_mae"] < before["val_rde_mae"]
    # validation is deterministic
    assert validate(model, val, rda, device=cpu) == after


def test_micro_batches_stop_at_the_end_of_data(kang_vocab_counts):
    it = iter([pack_rows(kang_vocab_counts[:4])])
    assert micro_batches(it, RDAConfig(), np.random.default_rng(0), 2) is None


def test_validation_sums_combine_across_shards(kang_vocab_counts):
    """Ranks sum statistics: a shard without deep cells must not turn the RDE metric into NaN."""
    totals = np.asarray(kang_vocab_counts.sum(axis=1)).ravel()
    shallow = kang_vocab_counts[np.flatnonzero(totals < 1000)[:6]]  # never down-sampled
    deep = kang_vocab_counts[np.flatnonzero(totals > 3000)[:6]]
    model = XTrimoGene(ModelConfig.from_name("tiny"))
    rda, cpu = RDAConfig(), torch.device("cpu")
    a = validation_sums(model, [pack_rows(shallow)], rda, device=cpu)
    b = validation_sums(model, [pack_rows(deep)], rda, device=cpu)
    assert a["rde_n"] == 0 and math.isnan(validation_metrics(a)["val_rde_mae"])
    combined = validation_metrics({k: a[k] + b[k] for k in a})
    assert combined["val_rde_mae"] == pytest.approx(b["rde_abs"] / b["rde_n"])
    assert combined["val_loss"] == pytest.approx(
        (a["loss_sum"] + b["loss_sum"]) / (a["loss_n"] + b["loss_n"])
    )
    assert math.isfinite(combined["val_loss"]) and a["loss_n"] > 0 and b["loss_n"] > 0


def test_projections_are_redrawn_every_n_training_forwards() -> None:
    from scfm.train.loop import redraw_projections_if_due

    torch.manual_seed(0)
    a = XTrimoGene(ModelConfig.from_name("tiny"))
    b = XTrimoGene(ModelConfig.from_name("tiny"))
    b.load_state_dict(a.state_dict())  # two ranks (or a run and its resumed copy)
    key = "decoder.layers.0.attn.attend.projection_matrix"
    before = a.state_dict()[key].clone()
    assert not redraw_projections_if_due(a, 992, 999, every=1000, seed=3)
    assert torch.equal(a.state_dict()[key], before)
    # 8 micro-batches per step: the step that crosses 1,000 forwards redraws
    assert redraw_projections_if_due(a, 992, 1000, every=1000, seed=3)
    assert redraw_projections_if_due(b, 996, 1004, every=1000, seed=3)
    assert not torch.equal(a.state_dict()[key], before)
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])  # same k, same matrix
    assert redraw_projections_if_due(a, 1992, 2000, every=1000, seed=3)
    assert not torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not redraw_projections_if_due(a, 0, 5000, every=0, seed=3)  # 0 = never


class ListBatches:
    """In-memory :class:`scfm.train.loop.Batches`: a seeded order per epoch."""

    def __init__(self, batches):
        self.batches = batches

    def epoch(self, epoch: int, skip: int = 0):
        order = np.random.default_rng(epoch).permutation(len(self.batches))
        return iter([self.batches[i] for i in order][skip:])


def test_fit_alone_trains_checkpoints_and_resumes_exactly(kang_vocab_counts):
    """No Ray: fit() runs, validates, hands over checkpoints, and a run restored from its step-4
    checkpoint ends with the weights of the uninterrupted run (CPU, one thread)."""
    cfg = PretrainConfig.load(
        overrides=[
            "model=tiny", "train.max_steps=8", "train.global_batch_size=8",
            "data.micro_batch_size=4", "train.lr=1e-2", "train.warmup_steps=2",
            "train.val_every=4", "train.checkpoint_every=4", "train.log_every=2",
            "train.redraw_every=4",
        ]
    )  # fmt: skip
    batches = ListBatches([pack_rows(kang_vocab_counts[i : i + 4]) for i in range(0, 24, 4)])
    val = [pack_rows(kang_vocab_counts[100:112])]
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    init = XTrimoGene(cfg.model_config()).state_dict()
    reports, payloads = [], {}

    def report(metrics, step, payload):
        reports.append((step, metrics))
        if payload is not None:
            payloads[step] = payload

    model = XTrimoGene(cfg.model_config())
    model.load_state_dict(init)
    final = fit(model, batches, cfg, device=cpu, val=lambda: val, report=report)
    assert final.step == 8 and final.epoch == 2  # 3 steps per epoch of 6 batches
    assert [s for s, _ in reports] == list(range(9))
    assert "val_loss" in reports[0][1] and "val_loss" in reports[4][1] and "lr" in reports[2][1]
    assert sorted(payloads) == [4, 8]
    assert reports[8][1]["val_loss"] < reports[0][1]["val_loss"]

    ck = payloads[4]
    state = TrainState.from_dict(ck.state.to_dict())  # as read back from train_state.pt
    assert (state.step, state.epoch, state.position) == (4, 1, 2)
    resumed_reports = []
    again = XTrimoGene(cfg.model_config())
    again.load_state_dict(ck.model_state)
    fit(
        again, batches, cfg, device=cpu, val=lambda: val, state=state,
        report=lambda m, step, p: resumed_reports.append((step, m)),
    )  # fmt: skip
    assert resumed_reports[0] == (4, {"restored_step": 4.0})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    assert [m["loss"] for s, m in resumed_reports[1:]] == pytest.approx(
        [m["loss"] for s, m in reports[5:]], abs=1e-6
    )
