"""The analytic FLOP formulas agree with torch's own count of a forward pass."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scfm.model import ModelConfig, XTrimoGene, prepare_inference
from scfm.model.flops import forward_flops, peak_flops, train_flops_per_cell
from tests.fixtures_data import pack_rows


def _counted(cfg: ModelConfig, batch) -> tuple[int, int]:
    """torch's matmul FLOP count of a forward pass, and the encoder tokens per cell.

    The pass runs on fake tensors (shapes only, no arithmetic): the counter reads shapes, so the
    count is a real pass's (checked below), and the decoder's full attention over 19,266
    positions costs nothing."""
    gene_ids, values, padding_mask = batch.encoder_inputs()
    mode = FakeTensorMode()
    inputs = [mode.from_tensor(t) for t in (gene_ids, values, padding_mask)]
    # the math backend decomposes attention into counted matmuls (CPU fused kernels are not)
    with mode, sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        XTrimoGene(cfg)(*inputs)
    return counter.get_total_flops(), gene_ids.shape[1]


@pytest.mark.parametrize(
    "preset,attention", [("tiny", "performer"), ("3m", "performer"), ("tiny", "sdpa")]
)
def test_formula_matches_flop_counter(preset, attention, kang_vocab_counts):
    cfg = ModelConfig.from_name(preset, dec_attention=attention)
    batch = prepare_inference(pack_rows(kang_vocab_counts[0:1]))  # one cell: no padding
    counted, tokens = _counted(cfg, batch)
    assert tokens > 200  # a real cell: hundreds of expressed genes
    estimate = forward_flops(cfg, tokens).total
    # torch counts matmuls, like the formula; only the zero-value embedding (one token) differs
    assert estimate == pytest.approx(counted, rel=0.01)


def test_fake_pass_counts_what_a_real_pass_counts(kang_vocab_counts):
    cfg = ModelConfig.from_name("tiny")
    batch = prepare_inference(pack_rows(kang_vocab_counts[0:1]))
    torch.manual_seed(0)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        XTrimoGene(cfg)(*batch.encoder_inputs())
    assert _counted(cfg, batch)[0] == counter.get_total_flops() > 1e8


def test_flops_grow_with_tokens_and_size():
    tiny, big = ModelConfig.from_name("tiny"), ModelConfig.from_name("100m")
    assert forward_flops(tiny, 1000).encoder > forward_flops(tiny, 500).encoder
    assert forward_flops(tiny, 1000).decoder == forward_flops(tiny, 500).decoder
    assert train_flops_per_cell(big, 2000) == pytest.approx(3 * forward_flops(big, 2000).total)
    # 100m at 2,000 tokens: ~1.4 TFLOPs a cell; the decoder over 19,266 positions dominates
    f = forward_flops(big, 2000)
    assert 1e12 < f.total < 2e12 and f.decoder > f.encoder


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("cpu") is None
