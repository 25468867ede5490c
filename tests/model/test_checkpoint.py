from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from scfm.model.checkpoint import (
    CheckpointError,
    CheckpointVersionError,
    GeneVocabularyMismatchError,
    convert_official_state_dict,
    export_official_state_dict,
    load_checkpoint,
    load_official_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from scfm.model.config import ModelConfig
from scfm.model.rda import prepare_inference
from scfm.model.xtrimogene import XTrimoGene

OFFICIAL_TSV = (
    Path(__file__).resolve().parents[3] / "shared/data/scfoundation/official_state_dict.tsv"
)


def _outputs(model: XTrimoGene, batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.embed_cells(*batch.encoder_inputs()), model.predict_expression(
            *batch.encoder_inputs()
        )


def test_save_load_round_trip_gives_identical_outputs(tmp_path, loader_batch, genes) -> None:
    torch.manual_seed(0)
    model = XTrimoGene(ModelConfig.from_name("tiny")).eval()
    folder = save_checkpoint(tmp_path / "ckpt", model, genes=genes, metadata={"step": 7})
    assert {p.name for p in folder.iterdir()} == {"model.pt", "model_config.json", "genes.txt"}
    assert (folder / "genes.txt").read_text().splitlines() == genes

    loaded, info = load_checkpoint(folder, genes=genes)
    assert loaded.cfg == model.cfg and not loaded.training
    assert info["metadata"] == {"step": 7}
    batch = prepare_inference(loader_batch(2))
    for a, b in zip(_outputs(model, batch), _outputs(loaded, batch), strict=True):
        assert torch.equal(a, b)
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


def test_checkpoint_file_loads_with_weights_only(tmp_path, genes) -> None:
    save_checkpoint(tmp_path, XTrimoGene(ModelConfig.from_name("tiny")), genes=genes)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["version"] == 1 and payload["config"]["name"] == "tiny"


def test_mismatched_gene_vocabulary_is_refused(tmp_path, genes) -> None:
    save_checkpoint(tmp_path, XTrimoGene(ModelConfig.from_name("tiny")), genes=genes)
    swapped = list(genes)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    with pytest.raises(GeneVocabularyMismatchError, match="index 5: 'G5' vs 'G6'"):
        load_checkpoint(tmp_path, genes=swapped)
    with pytest.raises(CheckpointError, match="expected 19264 genes"):
        save_checkpoint(tmp_path / "x", XTrimoGene(ModelConfig.from_name("tiny")), genes=genes[:5])


def test_other_format_version_is_refused(tmp_path, genes) -> None:
    save_checkpoint(tmp_path, XTrimoGene(ModelConfig.from_name("tiny")), genes=genes)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "model.pt")
    with pytest.raises(CheckpointVersionError, match="format version 99.*reads version 1"):
        read_checkpoint(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not an scfm model checkpoint"):
        read_checkpoint(tmp_path)


def test_load_with_exact_attention_override(tmp_path, genes) -> None:
    torch.manual_seed(0)
    performer = XTrimoGene(ModelConfig.from_name("tiny"))
    save_checkpoint(tmp_path, performer, genes=genes)
    model, _ = load_checkpoint(tmp_path, genes=genes, dec_attention="sdpa")
    assert model.cfg.dec_attention == "sdpa"
    state = model.state_dict()
    assert not any("projection_matrix" in k for k in state)  # random features dropped
    for key, value in state.items():  # every learned weight carried over
        assert torch.equal(value, performer.state_dict()[key]), key


def test_official_layout_maps_onto_100m_preset() -> None:
    """Every official key of the released model renames onto a 100m key of the same shape."""
    if not OFFICIAL_TSV.exists():
        pytest.skip(f"{OFFICIAL_TSV} not available")
    with OFFICIAL_TSV.open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["variant"] == "cell"]
    assert len(rows) == 265
    official = {r["key"]: torch.empty(json.loads(r["shape"]), device="meta") for r in rows}
    converted = convert_official_state_dict({"model." + k: v for k, v in official.items()})
    with torch.device("meta"):
        ours = XTrimoGene(ModelConfig.from_name("100m")).state_dict()
    assert set(converted) == set(ours)  # only the redraw counter is dropped
    for key, value in ours.items():
        assert converted[key].shape == value.shape, key


def test_official_checkpoint_round_trip(tmp_path, loader_batch) -> None:
    torch.manual_seed(1)
    model = XTrimoGene(ModelConfig.from_name("tiny")).eval()
    official = {"model." + k: v for k, v in export_official_state_dict(model).items()}
    assert any(k.startswith("model.decoder.performer.net.layers.0.0.fn.to_q") for k in official)
    ckpt = {
        v: {"config": {"model": "mae_autobin"}, "state_dict": official} for v in ("cell", "gene")
    }
    torch.save(ckpt, tmp_path / "models.ckpt")
    loaded = load_official_checkpoint(tmp_path / "models.ckpt", "gene", cfg=model.cfg)
    batch = prepare_inference(loader_batch(2))
    for a, b in zip(_outputs(model, batch), _outputs(loaded, batch), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="no 'rde' entry"):
        load_official_checkpoint(tmp_path / "models.ckpt", "rde", cfg=model.cfg)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_official_checkpoint(tmp_path / "models.ckpt", "cell", cfg=ModelConfig.from_name("3m"))
