"""load_model: in-memory, checkpoint folder / file, MLflow registry, official layout, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import scfm
from scfm.inference.loading import is_official_spec, load_model_with_info
from scfm.model import CheckpointError
from scfm.model.checkpoint import export_official_state_dict
from scfm.model.xtrimogene import XTrimoGene


def _same_weights(a: XTrimoGene, b: XTrimoGene) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _register_checkpoint(folder, name: str) -> str:
    """Log a checkpoint folder as a run artifact and register it (as scfm.train.pretrain does)."""
    import mlflow
    from mlflow import MlflowClient

    from scfm.tracking import start_run

    with start_run("pretrain", run_name="tiny") as run:
        mlflow.log_artifacts(str(folder), "model")
    client = MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    return f"models:/{name}/{version.version}"


def test_local_checkpoint_folder_and_file(tiny_model, tiny_checkpoint) -> None:
    for spec in (tiny_checkpoint, str(tiny_checkpoint / "model.pt")):
        model, info = load_model_with_info(spec, device="cpu")
        assert _same_weights(model, tiny_model) and not model.training
        assert info.kind == "scfm-checkpoint" and info.name == "tiny"
        assert not is_official_spec(spec)
    same, info = load_model_with_info(tiny_model, device="cpu")
    assert same is tiny_model and info.kind == "in-memory"


@pytest.mark.slow
def test_model_from_mlflow_registry_gives_identical_embeddings(
    kang, tiny_model, tiny_checkpoint, mlflow_uri
) -> None:
    uri = _register_checkpoint(tiny_checkpoint, "scfm-tiny-test")
    assert uri == "models:/scfm-tiny-test/1"
    model, info = load_model_with_info(uri, device="cpu")
    assert _same_weights(model, tiny_model)
    assert (info.kind, info.version, info.source) == ("mlflow", "1", uri)

    ref = scfm.embed(kang, tiny_model, progress=False)
    out = scfm.embed(kang, uri, progress=False, key_added="X_registry")
    np.testing.assert_array_equal(out, ref)
    assert kang.uns["scfm"]["X_registry"]["model"]["version"] == "1"
    with pytest.raises(CheckpointError, match="cannot fetch models:/no-such-model/1"):
        scfm.load_model("models:/no-such-model/1")


def test_official_layout_file(tmp_path, tiny_model, kang) -> None:
    official = {"model." + k: v for k, v in export_official_state_dict(tiny_model).items()}
    entry = {"config": {"model": "mae_autobin"}, "state_dict": official}
    torch.save({"cell": entry, "gene": entry, "rde": entry}, tmp_path / "models.ckpt")
    with pytest.raises(CheckpointError, match="do not fit the '100m' model"):
        scfm.load_model(tmp_path / "models.ckpt")  # no sizes in the config: 100m assumed
    # the official config carries the sizes; a tiny one written the official way
    entry["config"] = {
        "model": "mae_autobin",
        "model_config": {
            "mae_autobin": {
                "seq_len": 19266,
                "encoder": {"hidden_dim": 32, "depth": 2, "heads": 4, "module_type": "transformer"},
                "decoder": {
                    "hidden_dim": 16, "depth": 1, "heads": 2, "dim_head": 8,
                    "module_type": "performer",
                },
                "bin_num": 100,
                "bin_alpha": 1.0,
            }
        },
    }  # fmt: skip
    torch.save({"cell": entry, "gene": entry, "rde": entry}, tmp_path / "models.ckpt")
    with pytest.raises(CheckpointError, match="shape mismatches.*linear1.weight"):
        scfm.load_model(tmp_path / "models.ckpt")  # official FFN is 4x width, tiny's is 2x
    torch.manual_seed(3)
    tiny_4x = XTrimoGene(dataclasses.replace(tiny_model.cfg, enc_ffn_dim=128, dec_ffn_dim=64))
    official = {"model." + k: v for k, v in export_official_state_dict(tiny_4x).items()}
    entry["state_dict"] = official
    torch.save({"cell": entry, "gene": entry, "rde": entry}, tmp_path / "models.ckpt")
    model, info = load_model_with_info(tmp_path / "models.ckpt", variant="gene", device="cpu")
    assert info.kind == "official" and info.variant == "gene"
    assert is_official_spec(tmp_path / "models.ckpt")  # what batch jobs resolve settings from
    assert not is_official_spec("models:/scfm/1") and not is_official_spec(tmp_path)
    assert _same_weights(model, tiny_4x.eval())
    # official weights get the official settings by default (T = 4, vocabulary totals, fp32)
    out = scfm.embed(kang, str(tmp_path / "models.ckpt"), progress=False)
    settings = kang.uns["scfm"]["X_scfm"]["settings"]
    assert settings["preset"] == "official" and settings["target_depth"] == "t4"
    assert settings["depth_total"] == "vocab_genes" and settings["precision"] == "fp32"
    ref = scfm.embed(kang, tiny_4x, progress=False, settings="official")
    np.testing.assert_array_equal(out, ref)
    assert not np.allclose(out, scfm.embed(kang, tiny_4x, progress=False))  # scfm: T = S
    scfm_settings = scfm.embed(kang, str(tmp_path / "models.ckpt"), settings="scfm", progress=False)
    np.testing.assert_array_equal(scfm_settings, scfm.embed(kang, tiny_4x, progress=False))


def test_bad_model_specs(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found: pass a checkpoint folder"):
        scfm.load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="folder without model.pt"):
        scfm.load_model(tmp_path)
    with pytest.raises(TypeError, match="expected an XTrimoGene"):
        scfm.load_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="asked for CUDA"):
        if torch.cuda.is_available():
            pytest.skip("has a GPU")
        scfm.load_model(tmp_path, device="cuda")


def test_model_handle_keeps_the_model_and_prepared_input_validates_once(
    kang, tiny_checkpoint, monkeypatch
) -> None:
    import scfm.data.prepared as prep

    calls = []
    real = prep.validate_anndata
    monkeypatch.setattr(prep, "validate_anndata", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = scfm.load_model(tiny_checkpoint, device="cpu")
    assert isinstance(m.module, XTrimoGene) and m.info.kind == "scfm-checkpoint"
    assert "tiny" in repr(m) and "cpu" in repr(m)
    prepared = scfm.prepare(kang)  # validate + map genes once
    few = kang[:4].copy()
    out = m.embed(prepared, progress=False)
    np.testing.assert_array_equal(out, scfm.embed(kang.copy(), tiny_checkpoint, progress=False))
    genes = m.gene_embeddings(prepared, genes=["CD3E"], cells=[0, 1], progress=False)
    assert genes.values.shape == (1, m.cfg.dec_dim)
    m.enhance(scfm.prepare(few), fold=2, progress=False)
    assert len(calls) == 3  # prepare(kang), the embed reference, prepare(few): not once per call
    assert kang.uns["scfm"]["X_scfm"]["model"]["source"] == str(tiny_checkpoint)
    assert "scfm_enhanced" in few.layers
