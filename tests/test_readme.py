"""Every command the README shows parses with the parser it will meet; its paths exist.

``scfm …`` lines go through scfm's own CLI, ``python workflows/X.py …`` (alone or after ``ray job
submit --``) through the scfm command the workflow runs, file arguments of ``pytest``,
``kubectl apply -f`` and ``ray up`` must exist. Nothing is invoked: the demo, the notebooks and
the benchmarks run the README's examples for real in their own tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_infra import _parse, _scfm_parse

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The command lines of the README's ``bash`` blocks (continuations joined, comments cut)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def _workflow(argv: list[str]) -> list[str] | None:
    """``python workflows/X.py …`` of a command line (after ``ray job submit … --``), else None."""
    if argv[:3] == ["ray", "job", "submit"]:
        argv = argv[argv.index("--") + 1 :]
    return argv if argv[:1] == ["python"] and argv[1].startswith("workflows/") else None


def test_the_readme_shows_the_main_commands():
    firsts = {" ".join(a[:3]) for a in readme_commands()}
    wanted = ("make demo", "make test", "scfm corpus build", "scfm pretrain --corpus",
              "scfm evaluate annotation", "scfm finetune annotation", "scfm embed")  # fmt: skip
    for want in wanted:
        assert any(f.startswith(want) for f in firsts), want


@pytest.mark.parametrize(
    "argv",
    [a for a in readme_commands() if a[0] in {"scfm", ".venv/bin/scfm"}],
    ids=lambda a: " ".join(a[:3]),
)
def test_scfm_commands_parse(argv):
    import typer

    from scfm.cli import app

    ctx = _parse(typer.main.get_command(app), argv[1:], "scfm")
    assert ctx.info_name == argv[-1] or ctx.info_name in argv  # the sub-command it resolved to


@pytest.mark.parametrize(
    "job",
    [j for a in readme_commands() if (j := _workflow(a)) and j[1] != "workflows/scaling.py"],
    ids=lambda j: " ".join(j[1:3]),
)
def test_workflow_commands_parse(job):
    ctx = _scfm_parse(job)
    stage = job[1].removeprefix("workflows/").removesuffix(".py")
    assert ctx.info_name in {"build_corpus": {"build", "refresh"}, "pretrain": {"pretrain"},
                             "finetune": {"annotation"}, "embed": {"embed"}}[stage]  # fmt: skip


def test_files_the_readme_names_exist():
    named = []
    for argv in readme_commands():
        if "pytest" in argv[0]:
            named += [a.split("::")[0] for a in argv[1:] if a.startswith("tests/")]
        if argv[:2] == ["kubectl", "apply"]:
            named += [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
        if argv[:2] == ["ray", "up"]:
            named.append(argv[2])
        if (job := _workflow(argv)) is not None:
            named.append(job[1])
            named += [job[i + 1] for i, a in enumerate(job) if a == "--config"]
    assert named
    missing = [n for n in named if not (REPO / n).exists()]
    assert not missing, missing


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_python_examples_run(tmp_path, monkeypatch):
    """The README's Python blocks run in order, in one namespace, with their placeholders bound
    to real files: a 120-cell Kang PBMC h5ad for ``my_cells.h5ad`` / ``pbmc.h5ad``, a random-init
    tiny model saved as a checkpoint for the registered one, an official-format checkpoint
    (random weights) for ``models.ckpt`` and 4 Kang cells scaled to TPM for ``bulk``."""
    import numpy as np

    from scfm import datasets
    from scfm.data.io import read_counts
    from scfm.model.checkpoint import save_checkpoint
    from scfm.tasks.models import random_init
    from tests.test_notebooks import official_format_checkpoint

    kang = read_counts(datasets.fetch("kang2018"))[:120].copy()
    kang.write_h5ad(tmp_path / "cells.h5ad")
    bulk = kang[:4].copy()
    X = bulk.X.toarray().astype(np.float64)
    bulk.X = X / X.sum(axis=1, keepdims=True) * 1e6
    ckpt = official_format_checkpoint(tmp_path / "models.ckpt")
    tiny = save_checkpoint(tmp_path / "tiny", random_init("tiny", seed=0))
    monkeypatch.chdir(tmp_path)
    blocks = readme_python_blocks()
    assert len(blocks) == 3
    namespace: dict = {"bulk": bulk}
    for block in blocks:
        code = (
            block.replace('"my_cells.h5ad"', '"cells.h5ad"')
            .replace('"pbmc.h5ad"', '"cells.h5ad"')
            .replace('"models:/scfm-pretrained/3"', repr(str(tiny)))
            .replace('"models.ckpt"', repr(str(ckpt)))
        )
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    adata = namespace["adata"]
    assert adata.obsm["X_scfm"].shape[0] == 120 and np.isfinite(adata.obsm["X_scfm"]).all()
    assert adata.layers["scfm_enhanced"].shape == adata.shape
    assert namespace["X_vocab"].shape == (120, 19_264)
    genes = namespace["genes"]  # mean over the B cells: one vector per vocabulary gene
    assert genes.values.shape[0] == len(genes.genes) == 19_264
    assert np.isfinite(genes.values).all()
    assert adata.uns["scfm"]  # settings recorded
