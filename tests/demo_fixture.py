"""One run of ``scfm demo --small`` per test session, shared by every test that inspects it
(the demo test, the notebooks' lineage cells, the MLflow UI browser test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class DemoRun:
    out: Path  # the demo's results folder
    uri: str  # its sqlite MLflow store
    output: str  # what the command printed (newlines removed: rich folds long links)
    result: object  # the CliRunner result


@pytest.fixture(scope="session")
def demo_run(ray_local, tmp_path_factory) -> DemoRun:
    """``scfm demo --small`` into a fresh folder with its own sqlite MLflow store."""
    from typer.testing import CliRunner

    from scfm.cli import app
    from tests.conftest import tracking_store

    out = tmp_path_factory.mktemp("demo")
    with tracking_store(out) as uri:
        result = CliRunner().invoke(app, ["demo", "--out", str(out), "--small", "--no-progress"])
    (out / "demo.log").write_text(result.output)  # for a look after a failure
    assert result.exit_code == 0, result.output
    return DemoRun(out, uri, result.output.replace("\n", ""), result)
