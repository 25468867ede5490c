"""Padding-free (nested jagged) encoder: same states as the padded encoder, inference only."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from scfm.model.rda import prepare_inference


def test_jagged_encoder_equals_padded(loader_batch, tiny_model) -> None:
    b = prepare_inference(loader_batch(6, n_genes=(3, 150), seed=3))
    ids, vals, pad = b.encoder_inputs()
    assert pad.any()  # lengths differ, so the padded path really pads
    with torch.inference_mode():
        padded = tiny_model.encode(ids, vals, pad)
        jagged = tiny_model.encode(ids, vals, pad, jagged=True)
    valid = ~pad
    assert_close(jagged[valid], padded[valid], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(jagged[pad]) == 0
    # a cell's states depend on its own tokens only: cell 0 alone gives the same states
    with torch.inference_mode():
        alone = tiny_model.encode(ids[:1], vals[:1], pad[:1], jagged=True)
    assert_close(alone[0][valid[0]], jagged[0][valid[0]], rtol=1e-5, atol=1e-5)


def test_jagged_encoder_refuses_training_mode(loader_batch, tiny_model) -> None:
    b = prepare_inference(loader_batch(2, seed=4))
    tiny_model.train()
    with pytest.raises(RuntimeError, match="call model.eval"):
        tiny_model.encode(*b.encoder_inputs(), jagged=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jagged_encoder_on_cuda_in_bf16(loader_batch, tiny_model) -> None:
    b = prepare_inference(loader_batch(8, n_genes=(3, 300), seed=5)).to("cuda")
    model = tiny_model.to("cuda")
    ids, vals, pad = b.encoder_inputs()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        padded = model.encode(ids, vals, pad).float()
        jagged = model.encode(ids, vals, pad, jagged=True).float()
    valid = ~pad
    assert_close(jagged[valid], padded[valid], rtol=3e-2, atol=3e-2)
