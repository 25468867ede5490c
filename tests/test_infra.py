"""Deployment files: schemas, security settings, pinned versions, and every command they run.

* Kubernetes core objects are validated against the official OpenAPI schemas shipped by
  ``kubernetes-validate`` (strict: unknown fields fail); KubeRay objects against the schema of the
  fields scfm relies on (below), and their pod templates against the core PodTemplateSpec.
* ``infra/ray-up`` passes Ray's own cluster-config validation (``prepare_config`` +
  ``validate_config``, what ``ray up`` runs before it touches a cloud).
* Every command a manifest runs is parsed by the real command-line parser it will meet: scfm's
  typer app (through each workflow's ``cli_args``), ``ray job submit`` / ``ray start`` (Ray's click
  commands) and ``mlflow server`` (MLflow's click group). Parsing converts and checks every
  option, so a renamed or mistyped flag fails here, not on the cluster.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

import scfm

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S_VERSION = "1.30.0"
K8S_FILES = sorted(
    p.relative_to(INFRA).as_posix()
    for p in [*INFRA.glob("kuberay/*.yaml"), *INFRA.glob("mlflow/k8s/*.yaml")]
)
RAY_KINDS = {"RayCluster", "RayJob"}
SCFM_IMAGE = f"ghcr.io/scfm/scfm:{scfm.__version__}"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def _all_docs() -> Iterator[tuple[str, dict]]:
    for name in K8S_FILES:
        for doc in _docs(name):
            yield name, doc


def _by_kind(kind: str) -> list[tuple[str, dict]]:
    return [(n, d) for n, d in _all_docs() if d["kind"] == kind]


# ------------------------------------------------------------------- schemas of KubeRay fields
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {
        "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
        "template": _POD_TEMPLATE,
        "serviceType": {"enum": ["ClusterIP"]},  # never LoadBalancer / NodePort
    },
}
_WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams"],
    "properties": {
        **_GROUP["properties"],
        "groupName": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}
_CLUSTER_SPEC = {
    "type": "object",
    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "rayVersion": {"const": ray.__version__},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {**_GROUP, "required": ["serviceType", "rayStartParams", "template"]},
        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": _WORKER_GROUP},
    },
    "additionalProperties": False,
}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9-]+$"}},
}
RAY_SCHEMAS = {
    "RayCluster": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayCluster"},
            "metadata": _META,
            "spec": _CLUSTER_SPEC,
        },
        "additionalProperties": False,
    },
    "RayJob": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["entrypoint", "jobId", "submitterPodTemplate", "runtimeEnvYAML"],
                "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
                "properties": {
                    "entrypoint": {"type": "string"},
                    "jobId": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    "runtimeEnvYAML": {"type": "string"},
                    "submitterPodTemplate": _POD_TEMPLATE,
                    "rayClusterSpec": _CLUSTER_SPEC,
                    "clusterSelector": {
                        "type": "object",
                        "required": ["ray.io/cluster"],
                        "additionalProperties": {"type": "string"},
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
}


def _pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(role, pod template) of every pod an object creates."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        yield "submitter", spec["jobTemplate"]["spec"]["template"]
        return
    if doc["kind"] in ("Deployment", "StatefulSet"):
        yield "service", spec["template"]
        return
    if doc["kind"] == "RayJob":
        yield "submitter", spec["submitterPodTemplate"]
    cluster = spec.get("rayClusterSpec", spec if doc["kind"] == "RayCluster" else None)
    if cluster:
        yield "ray", cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            yield "ray", group["template"]


def test_infra_files_exist():
    assert {
        "kuberay/raycluster.yaml",
        "kuberay/networkpolicy.yaml",
        "kuberay/rayjob-pretrain.yaml",
        "kuberay/rayjob-finetune.yaml",
        "kuberay/rayjob-embed.yaml",
        "kuberay/cronjob-corpus-refresh.yaml",
        "mlflow/k8s/postgres.yaml",
        "mlflow/k8s/mlflow.yaml",
        "mlflow/k8s/networkpolicy.yaml",
    } <= set(K8S_FILES)


@pytest.mark.parametrize("name", K8S_FILES)
def test_manifests_pass_their_schemas(name):
    for doc in _docs(name):
        if doc["kind"] in RAY_KINDS:
            jsonschema.validate(doc, RAY_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        for _, template in _pod_templates(doc):  # KubeRay's pod templates are core PodTemplateSpecs
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "check"},
                "template": template,
            }
            kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def test_schema_checks_reject_mistakes():
    (_, cluster), *_ = _by_kind("RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, RAY_SCHEMAS["RayCluster"])
    (_, cron), *_ = _by_kind("CronJob")
    bad = copy.deepcopy(cron)
    bad["spec"]["startingDeadlineSeconds"] = "an hour"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["commnd"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# ------------------------------------------------------------------------------- security
def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_ray_node_and_client_uses_token_auth_from_a_secret():
    checked = 0
    for name, doc in _all_docs():
        for role, template in _pod_templates(doc):
            if role not in ("ray", "submitter"):
                continue
            for c in template["spec"]["containers"]:
                env = _env(c)
                assert env["RAY_AUTH_MODE"]["value"] == "token", (name, c["name"])
                ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "scfm-ray-auth", "key": "token"}, name
                checked += 1
    assert checked >= 9  # 4 RayCluster pod groups (2 clusters), 4 submitters + the CronJob


def test_ray_head_is_internal_and_behind_a_network_policy():
    ray_labels = []
    for name, doc in _all_docs():
        if doc["kind"] in RAY_KINDS:
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            if "headGroupSpec" in spec:
                assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", name
                assert "enableIngress" not in spec["headGroupSpec"], name
        for role, template in _pod_templates(doc):
            if role == "ray":
                ray_labels.append(template["metadata"]["labels"])
    (policy,) = [d for n, d in _by_kind("NetworkPolicy") if d["metadata"]["name"] == "scfm-ray"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert ray_labels and all(selector.items() <= labels.items() for labels in ray_labels)
    peers = policy["spec"]["ingress"]
    assert peers[0] == {"from": [{"podSelector": {"matchLabels": selector}}]}  # Ray ↔ Ray only
    client = peers[1]
    assert {p["port"] for p in client["ports"]} == {8265, 10001}  # job API/dashboard, client
    assert all("namespaceSelector" not in f and "ipBlock" not in f for f in client["from"])
    client_label = client["from"][0]["podSelector"]["matchLabels"]
    for name, doc in _all_docs():  # every submitter is admitted
        for role, template in _pod_templates(doc):
            if role == "submitter":
                assert client_label.items() <= template["metadata"]["labels"].items(), name


def test_no_credentials_in_files_or_on_command_lines():
    for name, doc in _all_docs():
        for _, template in _pod_templates(doc):
            for c in template["spec"]["containers"]:
                line = " ".join(c.get("command", []) + c.get("args", []))
                assert not re.search(r"password|secret|token=|://[^/\s]*:[^/\s]*@", line, re.I)
                for e in c.get("env", []):
                    if "value" in e:
                        assert "://" not in e["value"] or urlsplit(e["value"]).password is None
                        secretish = re.search(r"PASSWORD|SECRET|TOKEN|KEY", e["name"])
                        assert not secretish or e["name"] == "RAY_AUTH_MODE", (name, e["name"])
    compose = _docs("mlflow/docker-compose.yml")[0]["services"]["mlflow"]
    assert not re.search(r"password|secret|://[^/\s]*:[^/\s]*@", " ".join(compose["command"]), re.I)
    assert ":" not in compose["environment"]["MLFLOW_BACKEND_STORE_URI"].split("@")[0][13:]


def test_mlflow_server_binds_localhost_only():
    services = _docs("mlflow/docker-compose.yml")[0]["services"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)


# ------------------------------------------------------------------------ pinned versions
def _images() -> list[tuple[str, str]]:
    found = []
    for path in [*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")]:
        found += [(path.name, m) for m in re.findall(r"image:\s*([^\s#]+)", path.read_text())]
    for path in INFRA.rglob("Dockerfile"):
        found += [(path.name, m) for m in re.findall(r"^FROM\s+(\S+)", path.read_text(), re.M)]
    return found


def test_images_are_pinned_and_versions_match_the_code():
    images = _images()
    assert len(images) >= 15
    for where, image in images:
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and not tag.startswith("$"), (where, image)
    scfm_images = {i for _, i in images if i.startswith("ghcr.io/scfm/scfm")}
    assert scfm_images == {SCFM_IMAGE}
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in dockerfile
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned}" in dockerfile
    import mlflow

    assert (
        f"ghcr.io/mlflow/mlflow:v{mlflow.__version__}" in (INFRA / "mlflow/Dockerfile").read_text()
    )


# ----------------------------------------------------------- commands, parsed by real CLIs
def _parse(command: click.Command, argv: list[str], name: str) -> click.Context:
    """Parse ``argv`` with a click command or group (recursing into sub-commands); no invoke."""
    ctx = command.make_context(name, list(argv))
    while hasattr(ctx.command, "resolve_command"):  # a group (click's, or typer's own fork)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        sub_name, sub, rest = ctx.command.resolve_command(ctx, rest)
        ctx = sub.make_context(sub_name, rest, parent=ctx)
    return ctx


def _scfm_parse(job: list[str]) -> click.Context:
    """``python workflows/X.py ARGS`` → the scfm command line it runs → scfm's own parser."""
    import typer

    from scfm.cli import app

    assert job[0] == "python" and job[1].startswith("workflows/"), job
    path = REPO / job[1]
    spec = importlib.util.spec_from_file_location(f"workflow_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _parse(typer.main.get_command(app), module.cli_args(job[2:]), "scfm")


def _rayjob_entrypoints() -> list[tuple[str, list[str]]]:
    return [(n, shlex.split(d["spec"]["entrypoint"])) for n, d in _by_kind("RayJob")]


@pytest.mark.parametrize("name", sorted({n for n, _ in _rayjob_entrypoints()}))
def test_rayjob_entrypoints_parse_with_the_scfm_cli(name):
    (job,) = [j for n, j in _rayjob_entrypoints() if n == name]
    ctx = _scfm_parse(job)
    stage = job[1].removeprefix("workflows/").removesuffix(".py")
    assert ctx.info_name in {"pretrain": {"pretrain"}, "finetune": {"annotation"},
                             "embed": {"embed"}}[stage]  # fmt: skip


def test_parser_rejects_a_wrong_option():
    from typer._click.exceptions import BadParameter, NoSuchOption  # typer's own click fork

    with pytest.raises(NoSuchOption):
        _scfm_parse(["python", "workflows/pretrain.py", "--no-such-option"])
    with pytest.raises(BadParameter, match="valid integer"):
        _scfm_parse(
            ["python", "workflows/embed.py", "x", "-m", "m", "-o", "o", "--concurrency", "x"]
        )


def test_pretraining_rayjob_resolves_to_the_intended_config():
    (job,) = [j for n, j in _rayjob_entrypoints() if n.endswith("rayjob-pretrain.yaml")]
    proc = subprocess.run(
        [sys.executable, *job[1:], "--print-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"] == "10m" and cfg["scale"]["num_workers"] == 8
    assert cfg["storage_path"].startswith("s3://") and cfg["data"]["corpus"].startswith("s3://")
    assert cfg["name"] == "pretrain-10m"  # fixed: a resubmission continues the run


def test_scheduled_refresh_submits_once_per_slot_through_the_real_parsers():
    from ray.dashboard.modules.job.cli import submit

    ((_, cron),) = _by_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    job_name = _env(container)["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert job_name == "metadata.labels['batch.kubernetes.io/job-name']"
    # Kubernetes expands $(JOB_NAME) before the process starts: parse what the pod runs
    cmd = [a.replace("$(JOB_NAME)", "scfm-corpus-refresh-29412180") for a in container["command"]]
    assert cmd[:3] == ["ray", "job", "submit"]
    ctx = _parse(submit, cmd[3:], "submit")
    assert ctx.params["submission_id"] == "scfm-corpus-refresh-29412180"
    assert ctx.params["address"] == "http://scfm-head-svc.scfm.svc.cluster.local:8265"
    job = list(ctx.params["entrypoint"])
    assert job[:3] == ["python", "workflows/build_corpus.py", "--refresh"]
    sub = _scfm_parse(job)
    assert sub.info_name == "refresh" and sub.params["output"] == "s3://my-bucket/scfm/corpus"


def test_mlflow_server_commands_parse_with_the_mlflow_cli():
    from mlflow.cli import cli

    ((_, deployment),) = [
        (n, d) for n, d in _by_kind("Deployment") if d["metadata"]["name"] == "mlflow"
    ]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    ctx = _parse(cli, c["args"], "mlflow")
    assert ctx.info_name == "server" and ctx.params["port"] == 5000
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    compose = _docs("mlflow/docker-compose.yml")[0]["services"]["mlflow"]["command"]
    assert _parse(cli, compose[1:], "mlflow").info_name == "server"


# ------------------------------------------------------------------------------- ray up
def test_ray_up_config_passes_rays_validation_and_installs_torch_first():
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.scripts.scripts import start

    raw = yaml.safe_load((INFRA / "ray-up/aws-gpu.yaml").read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    gpu = cfg["available_node_types"]["gpu"]["node_config"]["InstanceType"]
    assert gpu.startswith(("g5", "g6", "p4", "p5"))
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch==" in c)
    project_at = next(i for i, c in enumerate(setup) if "install -q -e ~/scfm" in c)
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert torch_at < project_at and f"torch=={pinned}" in setup[torch_at]
    for line in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        last = line.split(";")[-1].replace("$RAY_HEAD_IP", "10.0.0.1")
        words = shlex.split(last)
        env = [w for w in words if re.match(r"^[A-Z_]+=", w)]
        words = [w for w in words if w not in env]
        if words[1:2] == ["stop"]:
            continue
        assert "RAY_AUTH_MODE=token" in env, line
        ctx = _parse(start, words[2:], "start")
        if ctx.params["head"]:
            assert ctx.params["dashboard_host"] == "127.0.0.1"
    bad = copy.deepcopy(cfg)
    bad["max_workerz"] = 3
    with pytest.raises(Exception, match="max_workerz"):
        validate_config(bad)
