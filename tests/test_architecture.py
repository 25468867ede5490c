"""The import rules of docs/ARCHITECTURE.md, checked on every module of the package.

Every import counts, at module level or inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scfm"

# Ray Train / Ray Data / the Ray connection: thin adapters only (workflows/ are outside scfm/).
RAY_ADAPTERS = {
    "scfm.runtime",  # ensure_ray: one way to connect
    "scfm.corpus.execute",  # the Ray executor of the corpus build
    "scfm.corpus.loader",  # Corpus.ray_dataset
    "scfm.inference.ray_batch",  # batch inference with Ray Data actors
    "scfm.train.ray_train",  # the Ray Train worker around fit()
    "scfm.train.pretrain",  # the TorchTrainer driver
    "scfm.train.corpus_data",  # the Ray datasets of a corpus for Ray Train
    "scfm.tasks.tune",  # Ray Tune sweeps
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = _imports(path)
    return out


MODULES = _modules()


def _offending(prefix: str, forbidden: tuple[str, ...], allow: set[str] = frozenset()):
    bad = {}
    for mod, imports in MODULES.items():
        if (mod == prefix or mod.startswith(prefix + ".")) and mod not in allow:
            hits = sorted(i for i in imports if i.split(".")[0] in forbidden or i.startswith(
                tuple(f for f in forbidden if "." in f)))  # fmt: skip
            if hits:
                bad[mod] = hits
    return bad


def test_the_package_is_scanned() -> None:
    assert {"scfm.model.xtrimogene", "scfm.data.prepared", "scfm.train.loop"} <= set(MODULES)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # the model is pure torch: no Ray, MLflow, AnnData, corpus or other stages
        (
            "scfm.model",
            (
                "ray",
                "mlflow",
                "anndata",
                "scanpy",
                "scfm.corpus",
                "scfm.inference",
                "scfm.train",
                "scfm.tasks",
            ),
        ),  # fmt: skip
        # the data layer imports no model (and no torch, Ray or MLflow)
        (
            "scfm.data",
            (
                "scfm.model",
                "scfm.inference",
                "scfm.train",
                "scfm.tasks",
                "scfm.corpus",
                "torch",
                "ray",
                "mlflow",
            ),
        ),  # fmt: skip
        # inference imports no training code
        ("scfm.inference", ("scfm.train",)),
        # downstream tasks read inputs through scfm.data, never the corpus
        ("scfm.tasks", ("scfm.corpus",)),
        # training imports no inference or downstream tasks
        ("scfm.train", ("scfm.inference", "scfm.tasks")),
        # the corpus job imports no model, inference or training
        ("scfm.corpus", ("scfm.model", "scfm.inference", "scfm.train", "scfm.tasks", "torch")),
    ],
)
def test_layers_import_only_what_they_may(package: str, forbidden: tuple[str, ...]) -> None:
    assert _offending(package, forbidden) == {}


def test_ray_only_in_adapters() -> None:
    users = {m for m, imps in MODULES.items() if any(i.split(".")[0] == "ray" for i in imps)}
    tune_only = {  # heads define Ray Tune search spaces (``tune.choice``) and nothing else of Ray
        m
        for m in users
        if m.startswith("scfm.tasks.")
        and all(i in ("ray", "ray.tune") for i in MODULES[m] if i.split(".")[0] == "ray")
    }
    assert users - tune_only <= RAY_ADAPTERS, sorted(users - tune_only - RAY_ADAPTERS)


def test_batch_inference_is_the_one_inference_module_that_reads_corpora() -> None:
    readers = {m for m, imps in MODULES.items() if m.startswith("scfm.inference.") and any(
        i.startswith("scfm.corpus") for i in imps)}  # fmt: skip
    assert readers == {"scfm.inference.ray_batch"}
