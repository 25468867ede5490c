"""``scfm embed`` and ``workflows/embed.py``: wiring, output, and errors a user can act on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scfm.cli import app
from scfm.inference.ray_batch import read_embeddings

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _workflow():
    spec = importlib.util.spec_from_file_location("embed_workflow", REPO / "workflows/embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embed_command_errors(tmp_path, tiny_checkpoint) -> None:
    result = runner.invoke(app, ["embed", str(tmp_path), "-m", "/no/such/model", "-o", "x"])
    assert result.exit_code == 1 and "not found: pass a checkpoint folder" in result.output
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part.parquet").write_text("")
    result = runner.invoke(
        app, ["embed", str(tmp_path), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and "exists and is not empty" in result.output
    result = runner.invoke(
        app, ["embed", str(tmp_path), "-m", str(tiny_checkpoint), "-o", "o", "--pool", "median"]
    )
    assert result.exit_code == 2 and "pool must be" in result.output


@pytest.mark.slow
def test_workflow_embeds_a_folder(ray_local, kang_full, tiny_checkpoint, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    kang_full[:12].write_h5ad(folder / "k.h5ad")
    with pytest.raises(SystemExit) as done:  # a typer app exits like the script would
        _workflow().main(
            [str(folder), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "emb"), "--no-mlflow",
             "--no-progress", "--pool", "mean", "--umap-color", "none"]
        )  # fmt: skip
    assert done.value.code == 0
    table, emb = read_embeddings(tmp_path / "emb")
    assert table.column("cell_id").to_pylist() == [
        f"in:k.h5ad:{o}" for o in kang_full.obs_names[:12]
    ]
    assert emb.shape == (12, 32)  # mean pool only: the tiny encoder width
