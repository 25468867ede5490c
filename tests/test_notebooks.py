"""Every notebook in ``notebooks/`` executes top to bottom (nbclient, a real ipykernel), with
small settings injected after its ``parameters`` cell. 01 and 03 use the model that the shared
demo run registered (on a copy of its MLflow store); 02 builds its own corpus and pretrains on the
test session's Ray; 04 runs on an official-format ``models.ckpt`` with random weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbclient
import nbformat
import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(name: str, params: dict, cwd: Path, monkeypatch) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>.ipynb`` with ``params`` injected after its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name}: outputs are committed; clear them"
    )
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    # the kernel imports this checkout's scfm, with one torch / BLAS thread like the tests
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    nbformat.write(nb, cwd / f"{name}.executed.ipynb")  # for a look after a failure
    return nb


def outputs_text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def demo_store_copy(demo_run, tmp_path: Path) -> str:
    """The demo's MLflow database, copied: notebook runs must not change the shared demo run."""
    shutil.copy(demo_run.out / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_01_quickstart(demo_run, tmp_path, monkeypatch):
    params = {
        "MODEL": "models:/scfm-demo/1",
        "MLFLOW_TRACKING_URI": demo_store_copy(demo_run, tmp_path),
        "MAX_CELLS": 400,
        "BASELINES": ["pca_lr", "pca_knn"],
        "HEAD_EPOCHS": 2,
        "OUT": str(tmp_path / "out"),
    }
    nb = run_notebook("01_quickstart", params, tmp_path, monkeypatch)
    text = outputs_text(nb)
    assert "genes map onto the 19,264-gene vocabulary" in text
    assert "scfm.pretrain_run_id" in text and "scfm.corpus_version" in text
    assert images(nb) >= 2  # the UMAP and the comparison
    assert (tmp_path / "out" / "umap.png").is_file()
    assert (tmp_path / "out" / "annotation" / "comparison.csv").is_file()


def test_02_corpus_and_pretraining(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", ray_local.get_runtime_context().gcs_address)
    params = {
        "SOURCES": ["kang2018"],
        "OUT": str(tmp_path / "out"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "STEPS": 2,
        "LEARNING_RATES": [3e-3],  # one pretraining: the comparison cells run on its single run
    }
    nb = run_notebook("02_corpus_and_pretraining", params, tmp_path, monkeypatch)
    text = outputs_text(nb)
    assert "v1: 0 units processed, new version committed: False" in text  # the refresh
    assert "trained on corpus v1" in text
    assert images(nb) >= 1  # the loss curves


def test_03_downstream(demo_run, tmp_path, monkeypatch):
    params = {
        "MODEL": "models:/scfm-demo/1",
        "MLFLOW_TRACKING_URI": demo_store_copy(demo_run, tmp_path),
        "OUT": str(tmp_path / "out"),
        "EPOCHS": 1,
        "CONTROL": False,
    }
    nb = run_notebook("03_downstream", params, tmp_path, monkeypatch)
    assert images(nb) >= 4  # a comparison plot per head and the summary
    for head in ("deepcdr", "scad", "gears"):
        assert (tmp_path / "out" / head / "comparison.csv").is_file()


def official_format_checkpoint(path: Path) -> Path:
    """A ``models.ckpt`` in the official layout (variants cell / rde / gene, each with the nested
    config and ``model.``-prefixed official key names) holding a tiny random-init model."""
    from scfm.model.checkpoint import export_official_state_dict, official_model_config
    from scfm.tasks.models import random_init
    from tests.official_reference import VARIANTS, official_config

    config = official_config()
    model = random_init(official_model_config(config), seed=0)
    state = {"model." + k: v for k, v in export_official_state_dict(model).items()}
    torch.save({v: {"config": config, "state_dict": state} for v in VARIANTS}, path)
    return path


def test_04_official_weights(tmp_path, monkeypatch):
    ckpt = official_format_checkpoint(tmp_path / "models.ckpt")
    nb = run_notebook(
        "04_official_weights",
        {
            "CKPT": str(ckpt),
            "MAX_CELLS": 30,
            "OUT": str(tmp_path / "out"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        },
        tmp_path,
        monkeypatch,
    )
    first = nb.cells[0].source
    assert "official-format checkpoint with random weights" in first
    text = outputs_text(nb)
    assert "official" in text and "median cosine similarity" in text
    assert images(nb) >= 1


def test_readme_lists_every_notebook():
    """The README's Notebooks table names exactly the notebooks this suite executes."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Notebooks", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"`notebooks/(\w+)\.ipynb`", section)
    assert listed == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert "pytest tests/test_notebooks.py" in section
