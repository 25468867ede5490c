from __future__ import annotations

import pytest
import torch

from scfm.model.config import N_GENES, N_POS, PAD_POS, S_POS, T_POS, ModelConfig
from scfm.model.params import PARTS, parameter_counts
from scfm.model.xtrimogene import XTrimoGene

# Exact trainable-parameter counts per part; 100m = the official table (OFFICIAL_CHECKPOINT.md 4.4)
EXPECTED = {
    "tiny": dict(
        token_emb=13_564,
        pos_emb=616_544,
        encoder=17_152,
        decoder_embed=528,
        decoder=2_256,
        norm=32,
        to_final=17,
        total=650_093,
    ),
    "3m": dict(
        token_emb=23_356,
        pos_emb=2_466_176,
        encoder=793_344,
        decoder_embed=8_256,
        decoder=100_096,
        norm=128,
        to_final=65,
        total=3_391_421,
    ),
    "10m": dict(
        token_emb=36_412,
        pos_emb=4_932_352,
        encoder=4_739_072,
        decoder_embed=32_896,
        decoder=595_072,
        norm=256,
        to_final=129,
        total=10_336_189,
    ),
    "100m": dict(
        token_emb=88_636,
        pos_emb=14_797_056,
        encoder=85_056_000,
        decoder_embed=393_728,
        decoder=18_915_328,
        norm=1_024,
        to_final=513,
        total=119_252_285,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parameter_counts(name: str) -> None:
    assert parameter_counts(ModelConfig.from_name(name)) == EXPECTED[name]


def test_100m_matches_official_trainable_count() -> None:
    assert parameter_counts(ModelConfig.from_name("100m"))["total"] == 119_252_285


def test_counts_of_built_model_equal_meta_counts() -> None:
    cfg = ModelConfig.from_name("tiny")
    model = XTrimoGene(cfg)
    assert parameter_counts(model) == parameter_counts(cfg)
    assert parameter_counts(model)["total"] == sum(p.numel() for p in model.parameters())
    assert set(PARTS) == {name for name, _ in model.named_children()}


def test_sequence_layout_constants() -> None:
    assert (N_GENES, T_POS, S_POS, N_POS, PAD_POS) == (19264, 19264, 19265, 19266, 19266)
    with torch.device("meta"):
        model = XTrimoGene(ModelConfig.from_name("tiny"))
    assert model.pos_emb.weight.shape == (19267, 32)


def test_nb_features_follows_official_formula() -> None:
    assert ModelConfig.from_name("100m").n_features == 266
    assert ModelConfig.from_name("tiny", nb_features=40).n_features == 40


def test_from_name_overrides_and_errors() -> None:
    cfg = ModelConfig.from_name("3m", dec_attention="sdpa", dropout=0.2)
    assert (cfg.name, cfg.dec_attention, cfg.dropout, cfg.enc_dim) == ("3m", "sdpa", 0.2, 128)
    with pytest.raises(KeyError, match="unknown model preset"):
        ModelConfig.from_name("7b")
    with pytest.raises(ValueError, match="dec_attention"):
        ModelConfig.from_name("tiny", dec_attention="flash")
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig.from_name("tiny", enc_heads=3)


def test_dict_round_trip_refuses_unknown_fields() -> None:
    cfg = ModelConfig.from_name("10m")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "rotary": True})
