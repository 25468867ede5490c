"""Deployment files parse, pin the versions the code uses, and run valid scfm command lines."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def _load(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def test_ray_and_torch_versions_match_the_code():
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob-pretrain.yaml"):
        doc = _load(name)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == ray.__version__, name
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in dockerfile
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned}" in dockerfile


def test_rayjob_entrypoint_is_a_valid_pretraining_command():
    entry = shlex.split(_load("kuberay/rayjob-pretrain.yaml")["spec"]["entrypoint"])
    assert entry[:2] == ["python", "workflows/pretrain.py"]
    proc = subprocess.run(
        [sys.executable, *entry[1:], "--print-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"] == "10m" and cfg["scale"]["num_workers"] == 8
    assert cfg["storage_path"].startswith("s3://")


def test_scheduled_refresh_submits_a_valid_refresh():
    cron = _load("kuberay/cronjob-corpus-refresh.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # one writer per corpus
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    job = cmd[cmd.index("--") + 1 :]
    assert job[:3] == ["python", "workflows/build_corpus.py", "--refresh"]
    proc = subprocess.run(
        [sys.executable, "workflows/build_corpus.py", "--refresh", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    for arg in job[3:]:
        assert arg.split("=")[0] in proc.stdout, arg


def test_mlflow_server_binds_localhost_only():
    services = _load("mlflow/docker-compose.yml")["services"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
