from __future__ import annotations

import json

from typer.testing import CliRunner

from scfm import __version__, datasets
from scfm.cli import app

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "genes" in result.output and "demo" in result.output


def test_genes_map_prints_report_and_validation():
    result = runner.invoke(app, ["genes", "map", str(datasets.fetch("kang2018"))])
    assert result.exit_code == 0, result.output
    assert "5,805" in result.output and "valid: raw counts" in result.output


def test_genes_map_json_for_10x_directory():
    result = runner.invoke(app, ["genes", "map", str(datasets.fetch_dir("tenx_v3_mex")), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["ok"] and payload["mapping"]["n_ensembl"] == 212
    assert payload["validation"]["n_cells"] == 1107


def test_genes_map_fails_on_normalized_input():
    path = datasets.fetch("pbmc68k_reduced")
    result = runner.invoke(app, ["genes", "map", str(path), "--layer", "raw"])
    assert result.exit_code == 1
    assert "looks log-normalized" in result.output
