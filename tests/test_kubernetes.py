"""The container and Kubernetes manifests: each kustomize overlay rendered by `kubectl kustomize`,
every object validated against the Kubernetes schemas (kubernetes-validate), and the wiring a fleet
needs checked: probes on /v2/health/*, drain on SIGTERM, the headless Service the pipeline reads,
the HPA, the store URL from a Secret, GPUs in the CUDA overlay, and configs our loaders accept."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
CUSTOM_KINDS = {"ServiceMonitor"}  # CRDs (the Prometheus operator's): no schema in kubernetes-validate

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed "
                                   "(`make setup` installs the Debian package kubernetes-client)")


def render(overlay: str) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(objects, kind, name_prefix):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert found, f"no {kind} {name_prefix}*"
    return found[0]


def container(deployment, name):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@needs_kubectl
@pytest.mark.parametrize("overlay", ["cpu", "gpu", "postgres"])
def test_every_rendered_object_matches_the_kubernetes_schemas(overlay):
    import kubernetes_validate

    objects = render(overlay)
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any error
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor",
                                            "PersistentVolumeClaim", "ConfigMap", "Secret", "PodDisruptionBudget"}


def test_the_validator_refuses_a_broken_manifest():
    import kubernetes_validate

    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"replicas": "three", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_the_server_deployment_probes_drains_scales_and_reads_the_store_from_a_secret(tmp_path):
    from loopserve.server.config import load_server_config

    objects = render("cpu")
    server = find(objects, "Deployment", "loopserve")
    spec = server["spec"]["template"]["spec"]
    c = container(server, "server")
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    store = next(e for e in c["env"] if e["name"] == "LOOPSERVE_STORE")["valueFrom"]["secretKeyRef"]
    secret = find(objects, "Secret", "loopserve-store")
    assert store["name"] == secret["metadata"]["name"] and store["key"] == "url"  # kustomize's hashed name
    # SIGTERM drains: the preStop sleep, then graceful_shutdown_s, fit in the grace period
    config_map = find(objects, "ConfigMap", "loopserve-config")
    (tmp_path / "server.yaml").write_text(config_map["data"]["server.yaml"])
    config = load_server_config(tmp_path / "server.yaml")
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert sleep + config.http.graceful_shutdown_s < spec["terminationGracePeriodSeconds"]
    assert config.http.host == "0.0.0.0" and config.http.port == 8000
    # the Services: one for clients, a headless one whose addresses are the replicas
    selector = server["spec"]["selector"]["matchLabels"]
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert services["loopserve"]["spec"]["selector"] == selector
    assert services["loopserve-replicas"]["spec"]["clusterIP"] == "None"
    assert services["loopserve-replicas"]["spec"]["selector"] == selector
    hpa = find(objects, "HorizontalPodAutoscaler", "loopserve")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "loopserve"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "loopserve_queue_depth"
    monitor = find(objects, "ServiceMonitor", "loopserve")
    ports = {p["name"] for s in services.values() for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert find(objects, "ConfigMap", "loopserve-grafana-dashboard")["metadata"]["labels"]["grafana_dashboard"] == "1"


@needs_kubectl
def test_the_pipeline_reads_every_replica_through_the_headless_service(tmp_path):
    from loopserve.pipeline.config import load_pipeline_config

    objects = render("cpu")
    pipeline = find(objects, "Deployment", "loopserve-pipeline")
    assert pipeline["spec"]["replicas"] == 1 and pipeline["spec"]["strategy"]["type"] == "Recreate"
    args = container(pipeline, "pipeline")["args"]
    assert args[:3] == ["pipeline", "watch", "/etc/loopserve/pipeline.yaml"] and "--metrics-port" in args
    config_map = find(objects, "ConfigMap", "loopserve-config")
    (tmp_path / "pipeline.yaml").write_text(config_map["data"]["pipeline.yaml"])
    config = load_pipeline_config(tmp_path / "pipeline.yaml")
    assert config.replicas == ["dns://loopserve-replicas:8000"]
    headless = find(objects, "Service", "loopserve-replicas")
    assert headless["spec"]["ports"][0]["port"] == 8000

    # Each replica spills labelled rows into its own directory on the shared volume
    # (feedback/<pod name>), and the pipeline's feedback_dir pattern covers every one of them.
    import fnmatch

    from loopserve.server.config import load_server_config

    (tmp_path / "server.yaml").write_text(config_map["data"]["server.yaml"])
    spill_dir = load_server_config(tmp_path / "server.yaml").models[0].feedback.spill_dir
    server = container(find(objects, "Deployment", "loopserve"), "server")
    own = next(m for m in server["volumeMounts"] if m["mountPath"] == spill_dir)
    assert own["name"] == "shared" and own["subPathExpr"] == "feedback/$(POD_NAME)"
    pod_name = next(e for e in server["env"] if e["name"] == "POD_NAME")["valueFrom"]["fieldRef"]
    assert pod_name == {"fieldPath": "metadata.name"}
    shared = {m["name"]: m["mountPath"] for m in container(pipeline, "pipeline")["volumeMounts"]}["shared"]
    for pod in ("loopserve-7d9f-abcde", "loopserve-7d9f-fghij"):
        on_the_volume = f"{shared}/feedback/{pod}"
        assert any(fnmatch.fnmatch(on_the_volume, pattern) for pattern in config.retrain_data.feedback_dir), pod


@needs_kubectl
def test_the_gpu_overlay_asks_for_gpus_and_runs_the_cuda_image():
    server = find(render("gpu"), "Deployment", "loopserve")
    c = container(server, "server")
    assert c["image"].endswith("-cuda")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in server["spec"]["template"]["spec"]["tolerations"])
    cpu = container(find(render("cpu"), "Deployment", "loopserve"), "server")
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


@needs_kubectl
def test_the_postgres_overlay_points_the_store_at_its_own_postgresql():
    import base64

    objects = render("postgres")
    secret = find(objects, "Secret", "loopserve-store")
    url = base64.b64decode(secret["data"]["url"]).decode()
    match = re.fullmatch(r"postgresql://(\w+):[^@]+@([\w-]+):(\d+)/(\w+)\?dir=(/\S+)", url)
    assert match, url
    service = find(objects, "Service", match.group(2))
    assert service["spec"]["ports"][0]["port"] == int(match.group(3))
    database = find(objects, "StatefulSet", "loopserve-postgres")
    assert database["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    mounts = container(find(objects, "Deployment", "loopserve"), "server")["volumeMounts"]
    assert match.group(5) in {m["mountPath"] for m in mounts}  # the blobs are on the shared volume


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_the_dockerfiles_copy_what_exists_and_run_loopserve(dockerfile):
    text = (ROOT / "deploy" / "docker" / dockerfile).read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: not in the repository"
    assert 'ENTRYPOINT ["loopserve"]' in text and "USER 10001" in text and "EXPOSE 8000" in text
    if dockerfile.endswith("cuda"):
        assert "nvidia/cuda" in text and "[gpu]" in text
