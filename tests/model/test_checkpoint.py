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


# ----------------------------------------------------------------- official layout (importer)
# The flattened config printed by the official loader for the `cell` variant
# (OFFICIAL_CHECKPOINT.md §3), split into model_config / dataset_config as stored in the file.
OFFICIAL_CONFIG = {
    "model": "mae_autobin",
    "model_config": {
        "mae_autobin": {
            "seq_len": 19266,
            "gene_num": 19266,
            "encoder": {
                "hidden_dim": 768, "depth": 12, "heads": 12, "dim_head": 64,
                "seq_len": 19266, "module_type": "transformer", "norm_first": False,
            },
            "decoder": {
                "hidden_dim": 512, "depth": 6, "heads": 8, "dim_head": 64,
                "seq_len": 19266, "module_type": "performer", "norm_first": False,
            },
            "n_class": 104, "pad_token_id": 103, "mask_token_id": 102,
            "bin_num": 100, "bin_alpha": 1.0, "rawcount": True,
        }
    },
    "dataset_config": {
        "rnaseq": {"bin_num": 100, "mask_prob": 0.3, "mae_encoder_max_seq_len": 15000}
    },
}  # fmt: skip


def _tiny_official_file(path, model, variants=("cell", "gene", "rde"), mutate=None):
    official = {"model." + k: v for k, v in export_official_state_dict(model).items()}
    if mutate:
        mutate(official)
    torch.save(
        {v: {"config": {"model": "mae_autobin"}, "state_dict": official} for v in variants}, path
    )
    return path


def test_official_config_maps_to_the_100m_preset() -> None:
    from scfm.model.checkpoint import flatten_official_config, official_model_config

    flat = flatten_official_config(OFFICIAL_CONFIG)
    assert flat["model_type"] == "mae_autobin" and flat["mae_encoder_max_seq_len"] == 15000
    cfg = official_model_config(OFFICIAL_CONFIG)
    assert cfg == ModelConfig.from_name("100m")
    assert cfg.n_features == 266  # floor(64 ln 64), the projection_matrix rows in the TSV


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model_config"]["mae_autobin"].update(seq_len=20002), "another gene vocab"),
        (lambda c: c.update(model="performergau_resolution"), "not supported"),
        (lambda c: c["model_config"]["mae_autobin"]["decoder"].update(module_type="transformer"),
         "module_type 'transformer' where scfm expects 'performer'"),
        (lambda c: c["model_config"]["mae_autobin"]["encoder"].pop("heads"), "lacks encoder"),
    ],
)  # fmt: skip
def test_unsupported_official_configs_are_refused(change, message) -> None:
    import copy

    from scfm.model.checkpoint import OfficialCheckpointError, official_model_config

    config = copy.deepcopy(OFFICIAL_CONFIG)
    change(config)
    with pytest.raises(OfficialCheckpointError, match=message):
        official_model_config(config)


def test_official_import_names_every_unmatched_key(tmp_path, tiny_model) -> None:
    from scfm.model.checkpoint import OfficialCheckpointError

    def drop(sd):
        del sd["model.token_emb.emb_pad.weight"]

    def extra(sd):
        sd["model.encoder.transformer_encoder.0.extra.weight"] = torch.zeros(3)

    def reshape(sd):
        sd["model.decoder.performer.net.layers.0.1.fn.fn.w1.weight"] = torch.zeros(5, 16)

    cases = [
        (drop, r"missing from the file: token_emb\.emb_pad\.weight"),
        (extra, r"in the file but not in the model: encoder\.transformer_encoder\.0\.extra"),
        (reshape, r"shape mismatches: decoder\.performer\.net\.layers\.0\.1\.fn\.fn\.w1\.weight: "
                  r"file \[5, 16\] vs model \[32, 16\]"),
    ]  # fmt: skip
    for mutate, message in cases:
        path = _tiny_official_file(tmp_path / "bad.ckpt", tiny_model, mutate=mutate)
        with pytest.raises(OfficialCheckpointError, match=message):
            load_official_checkpoint(path, "cell", cfg=tiny_model.cfg)


def test_official_file_variants_and_single_entry_files(tmp_path, tiny_model, loader_batch) -> None:
    from scfm.model.checkpoint import OfficialCheckpointError

    path = _tiny_official_file(tmp_path / "models.ckpt", tiny_model, variants=("cell",))
    with pytest.raises(OfficialCheckpointError, match=r"no 'gene' entry \(found \['cell'\]\)"):
        load_official_checkpoint(path, "gene", cfg=tiny_model.cfg)
    with pytest.raises(OfficialCheckpointError, match="variant must be one of"):
        load_official_checkpoint(path, "rce", cfg=tiny_model.cfg)
    # a single Lightning-style entry at the top level (as the official fine-tuning saves)
    official = {"model." + k: v for k, v in export_official_state_dict(tiny_model).items()}
    torch.save({"state_dict": official, "epoch": 3}, tmp_path / "single.ckpt")
    loaded = load_official_checkpoint(tmp_path / "single.ckpt", cfg=tiny_model.cfg)
    batch = prepare_inference(loader_batch(2))
    for a, b in zip(_outputs(tiny_model, batch), _outputs(loaded, batch), strict=True):
        assert torch.equal(a, b)


def test_official_file_with_pickled_objects_is_refused(tmp_path, tiny_model) -> None:
    from scfm.model.checkpoint import OfficialCheckpointError

    official = export_official_state_dict(tiny_model)
    torch.save({"cell": {"state_dict": official, "hparams": Path("x")}}, tmp_path / "p.ckpt")
    with pytest.raises(OfficialCheckpointError, match="weights_only=True"):
        load_official_checkpoint(tmp_path / "p.ckpt")


def test_synthetic_official_checkpoint_from_tsv_round_trips(tmp_path) -> None:
    """A full-size file laid out as OFFICIAL_CHECKPOINT.md (every TSV key, `model.` prefix,
    config, bf16 weights, three variants) imports into the 100m model value for value."""
    if not OFFICIAL_TSV.exists():
        pytest.skip(f"{OFFICIAL_TSV} not available")
    with OFFICIAL_TSV.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for r in rows:  # one set of tensors; the variants share them (saved once)
        if r["key"] in tensors:
            continue
        shape = json.loads(r["shape"])
        if r["dtype"] == "int64":
            tensors[r["key"]] = torch.tensor(7)
        else:
            tensors[r["key"]] = torch.randn(shape, generator=gen).to(torch.bfloat16)
    assert len(tensors) == 265 and sum(t.numel() for t in tensors.values()) == 119_354_430
    state = {"model." + k: v for k, v in tensors.items()}
    variants = sorted({r["variant"] for r in rows})
    assert variants == ["cell", "gene", "rde"]
    ckpt = {v: {"config": OFFICIAL_CONFIG, "state_dict": state, "epoch": 1} for v in variants}
    torch.save(ckpt, tmp_path / "models.ckpt")
    del ckpt, state

    model = load_official_checkpoint(tmp_path / "models.ckpt", "rde")
    assert model.cfg == ModelConfig.from_name("100m") and not model.training
    exported = export_official_state_dict(model)
    assert set(exported) == set(tensors)
    for key, value in tensors.items():
        if key == "decoder.performer.calls_since_last_redraw":
            continue  # dropped: scfm redraws explicitly
        got = exported[key]
        assert got.dtype == torch.float32, key
        assert torch.equal(got, value.float()), key
