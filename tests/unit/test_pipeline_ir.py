"""The compiled Kubeflow IR: committed and fresh (byte-identical compiles), one task per stage,
switches, GPUs, secrets, retries, caching, exit handler; the curated run form (<= 25 described
fields with params.yaml's defaults, `params_overrides` for the rest) and the per-stage
configuration hand-off that keys each task's cache.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from affectflow.config import ConfigError, Params, load_params
from affectflow.orchestration import kfp_io, kfp_tracking
from affectflow.orchestration import run_form as F
from affectflow.orchestration.ir import compile_to, stale
from affectflow.stages import STAGES as TABLE
from affectflow.stages.runner import with_feature_kinds
from pipelines.cli import compiled_path
from pipelines.train_pipeline import build_pipeline

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "params.yaml"
STAGES = ("ingest", "validate", "features", "augment", "pretrain", "train", "evaluate", "rescore", "register",
          "promote")
TASKS = (*STAGES, "validate-features")
GPU_STAGES = ("features", "augment", "pretrain", "train")
"""With log-mel features (device auto) and GPUs, features runs on the GPU too."""
GPU_SETTINGS = {
    "features.kinds": ["logmel", "egemaps"],
    "pipeline.gpu_limit": 2,
    "pipeline.node_selector": {"nvidia.com/gpu.present": "true"},
    "pipeline.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def _compile(params: Params, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    compile_to(build_pipeline(params), path)
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def base() -> Params:
    return load_params(PARAMS_YAML)


@pytest.fixture(scope="module")
def ir(base: Params, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline compiled from params.yaml with GPU scheduling settings filled in."""
    params = load_params(PARAMS_YAML, GPU_SETTINGS)
    return _compile(params, tmp_path_factory.mktemp("ir") / "ir.yaml")


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every (nested) DAG, by task name."""
    out: dict[str, dict[str, Any]] = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        out.update(dag["tasks"])
    return out


def _executor(spec: dict[str, Any], task: dict[str, Any]) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


# ----------------------------------------------------------------------------- committed IR
def test_committed_ir_matches_a_fresh_compile(base: Params) -> None:
    path = compiled_path()
    assert path == REPO / "pipelines" / "compiled" / "affectflow-train.yaml"
    assert path.is_file(), f"{path} missing: run `affectflow pipeline compile`"
    assert not stale(build_pipeline(base), path), f"{path} is stale: run `affectflow pipeline compile` and commit it"


def test_stale_detects_a_changed_default(base: Params, tmp_path: Path) -> None:
    out = compile_to(build_pipeline(base), tmp_path / "ir.yaml")
    changed = load_params(PARAMS_YAML, {"train.epochs": base.train.epochs + 1})
    assert stale(build_pipeline(changed), out)


def test_two_compiles_in_separate_processes_are_byte_identical(tmp_path: Path) -> None:
    outs = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    # fresh interpreters: dict and set orders may differ between processes; the second has imported
    # openSMILE first, whose `oyaml` changes how PyYAML writes every later mapping
    for out, pre in zip(outs, ("", "import opensmile; "), strict=True):
        code = (f"{pre}import sys; from affectflow.cli import main; "
                f"sys.exit(main(['pipeline', '--params', {str(PARAMS_YAML)!r}, 'compile', '--out', {str(out)!r}]))")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=tmp_path,
                       env={"PYTHONHASHSEED": "random", "PATH": "/usr/bin:/bin"})
    assert outs[0].read_bytes() == outs[1].read_bytes()


# ----------------------------------------------------------------------------- DAG shape
def test_one_task_per_stage(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    refs = [t["componentRef"]["name"] for t in _tasks(spec).values()]
    for stage in TASKS:
        assert refs.count(f"comp-{stage}") == 1, f"stage {stage}: {refs.count(f'comp-{stage}')} tasks"
    leaves = {r for r in refs if not r.startswith(("comp-condition", "comp-exit-handler", "comp-for-loop"))}
    assert leaves == {f"comp-{s}" for s in TASKS} | {
        "comp-resolve-params", "comp-skip-augment", "comp-skip-pretrain", "comp-record-run-status",
        "comp-data-stamp", "comp-plan-features", "comp-gather-features"}
    assert list(TABLE) == list(STAGES)  # the DAG has a task for every row of the stage table


def test_the_feature_gate_runs_after_features_and_before_training(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    tasks = _tasks(spec)
    gate = tasks["validate-features"]
    assert set(gate["inputs"]["artifacts"]) == {"manifest", "store"}
    assert "gather-features" in gate["dependentTasks"]  # the store: the features tasks' shards gathered
    assert "validate-features" in tasks["train"]["dependentTasks"]
    assert "validate" in tasks["plan-features"]["dependentTasks"]  # the manifest gate runs before features
    loop = next(t for t in tasks.values() if "parameterIterator" in t)  # the features fan-out
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("plan-features-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] == load_params(PARAMS_YAML).pipeline.features_parallelism


def test_tasks_depend_on_the_artifacts_the_stage_table_names(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Each stage task's artifact inputs are the stage's inputs in the table (KFP names: store = features)."""
    spec, _ = ir
    tasks = _tasks(spec)
    kfp_name = {"features": "store", "evaluation": "evaluation", "encoder": "encoder", "synthetic": "synthetic",
                "manifest": "manifest", "model": "model", "rescore": "rescore", "registration": "registration"}
    for name, row in TABLE.items():
        if name in ("ingest",):
            continue
        have = set(tasks[name]["inputs"].get("artifacts", {}))
        want = {kfp_name[a] for a in (*row.inputs, *row.optional)} - ({"store"} if name == "validate" else set())
        assert have == want, name


def test_switches_and_gate_are_conditions_in_the_dag(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    tasks = _tasks(spec)
    conditions = {name: t["triggerPolicy"]["condition"] for name, t in tasks.items()
                  if t.get("triggerPolicy", {}).get("condition")}

    def guarded_by(component: str) -> list[str]:
        """Conditions of the condition-DAGs that contain `component`."""
        out = []
        for name, cond in conditions.items():
            inner = spec["components"][tasks[name]["componentRef"]["name"]]["dag"]["tasks"]
            if any(t["componentRef"]["name"] == component for t in inner.values()):
                out.append(cond)
        return out

    assert any("pipelinechannel--augment'] == true" in c for c in guarded_by("comp-augment"))
    assert any("pipelinechannel--augment'] == true)" in c and c.startswith("!")
               for c in guarded_by("comp-skip-augment"))
    assert any("pipelinechannel--dann'] == true" in c for c in guarded_by("comp-pretrain"))
    assert any("register-Output'] == true" in c for c in guarded_by("comp-promote"))
    # train consumes whichever branch ran (dsl.OneOf), so it runs in both cases
    train_inputs = tasks["train"]["inputs"]["artifacts"]
    assert {"synthetic", "encoder"} <= set(train_inputs)


def test_the_retraining_loop_in_the_dag(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """New data re-runs ingest without edits (the never-cached data stamp keys its cache), and the
    champion is re-scored on this run's manifest and store before register gates on one test set."""
    spec, _ = ir
    tasks = _tasks(spec)
    stamp_in = tasks["ingest"]["inputs"]["parameters"]["data_version"]["taskOutputParameter"]
    assert stamp_in["producerTask"] == "data-stamp"
    assert tasks["data-stamp"]["inputs"]["parameters"]["data_version"]["componentInputParameter"].endswith(
        "data_version")
    rescore = tasks["rescore"]
    assert set(rescore["inputs"]["artifacts"]) == {"manifest", "store", "model", "evaluation"}
    assert rescore["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"] == "evaluate"
    register = tasks["register"]["inputs"]
    assert register["artifacts"]["rescore"]["taskOutputArtifact"]["producerTask"] == "rescore"
    assert register["parameters"]["data_version"]["taskOutputParameter"]["producerTask"] == "data-stamp"


def test_exit_handler_records_the_run_whatever_happened(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    root = spec["root"]["dag"]["tasks"]
    record = root["record-run-status"]
    assert record["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "taskFinalStatus" in record["inputs"]["parameters"]["status"]
    assert record["dependentTasks"] == ["exit-handler-1"]
    assert not record.get("cachingOptions", {}).get("enableCache")


def test_gpu_tasks_request_accelerators(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    tasks = _tasks(spec)
    execs = spec["deploymentSpec"]["executors"]
    for stage in STAGES:
        resources = execs[_executor(spec, tasks[stage])]["container"].get("resources", {})
        if stage in GPU_STAGES:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", stage
            assert resources["accelerator"]["resourceCount"] == str(GPU_SETTINGS["pipeline.gpu_limit"]), stage
        else:
            assert "accelerator" not in resources, stage


def test_gpu_tasks_run_in_the_gpu_image(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from affectflow.orchestration.images import image_for

    spec, _ = ir
    tasks = _tasks(spec)
    execs = spec["deploymentSpec"]["executors"]
    for stage in STAGES:
        image = execs[_executor(spec, tasks[stage])]["container"]["image"]
        assert image == image_for("gpu" if stage in GPU_STAGES else "cpu"), stage


def test_opensmile_only_features_stay_on_the_cpu_image(tmp_path: Path) -> None:
    """params.yaml's default kinds (ComParE, eGeMAPS) are openSMILE on the CPU: no GPU held for them."""
    from affectflow.orchestration.images import image_for

    params = load_params(PARAMS_YAML, {k: v for k, v in GPU_SETTINGS.items() if k != "features.kinds"})
    assert "logmel" not in params.features.kinds
    spec, _ = _compile(params, tmp_path / "ir.yaml")
    execs = spec["deploymentSpec"]["executors"]
    container = execs[_executor(spec, _tasks(spec)["features"])]["container"]
    assert "accelerator" not in container.get("resources", {}) and container["image"] == image_for("cpu")
    assert execs[_executor(spec, _tasks(spec)["train"])]["container"]["image"] == image_for("gpu")


def test_node_selector_and_tolerations_on_gpu_tasks_only(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, platform = ir
    tasks = _tasks(spec)
    for stage in STAGES:
        cfg = platform.get(_executor(spec, tasks[stage]), {})
        if stage in GPU_STAGES:
            assert cfg["nodeSelector"]["labels"] == GPU_SETTINGS["pipeline.node_selector"], stage
            tol = cfg["tolerations"][0]
            assert (tol["key"], tol["operator"], tol["effect"]) == ("nvidia.com/gpu", "Exists", "NoSchedule")
        else:
            assert "nodeSelector" not in cfg and "tolerations" not in cfg, stage


def _secret_mounts(platform: dict[str, Any], spec: dict[str, Any], task: dict[str, Any]) -> list[dict[str, Any]]:
    return platform.get(_executor(spec, task), {}).get("secretAsEnv", [])


def test_secrets_become_environment(ir: tuple[dict[str, Any], dict[str, Any]], base: Params) -> None:
    spec, platform = ir
    tasks = _tasks(spec)

    def secrets(task: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for s in _secret_mounts(platform, spec, tasks[task]):
            out.setdefault(s["secretName"], set()).update(k["envVar"] for k in s["keyToEnv"])
        return out

    for stage in ("ingest", "validate", "validate-features", "features", "augment", "pretrain", "train", "evaluate",
                  "data-stamp", "rescore"):  # data-stamp lists s3:// corpora (found by the rehearsal)
        s3 = secrets(stage)[base.pipeline.s3_secret]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= s3, stage
    for task in ("resolve-params", "augment", "pretrain", "train", "evaluate", "register", "promote",
                 "record-run-status", "rescore"):  # rescore reads the champion from the registry
        assert "MLFLOW_TRACKING_URI" in secrets(task)[base.pipeline.mlflow_secret], task
    assert base.pipeline.s3_secret not in secrets("register")  # registry needs MLflow only
    for task in ("ingest", "validate", "features"):  # they log nothing to MLflow
        assert base.pipeline.mlflow_secret not in secrets(task), task


def test_no_optional_credential_where_one_is_required(ir: tuple[dict[str, Any], dict[str, Any]],
                                                      base: Params) -> None:
    """A missing S3 key or MLFLOW_TRACKING_URI fails the pod (Kubernetes names the Secret key), never a
    silent fallback; only the basic-auth keys of an external MLflow are optional (the chart has none)."""
    from pipelines.train_pipeline import MLFLOW_AUTH_KEYS, S3_KEYS

    spec, platform = ir
    seen = 0
    for name, task in _tasks(spec).items():
        if "componentRef" not in task or name.startswith(("condition", "exit-handler", "for-loop")):
            continue
        for mount in _secret_mounts(platform, spec, task):
            keys = {k["secretKey"] for k in mount["keyToEnv"]}
            if mount.get("optional"):
                assert keys <= set(MLFLOW_AUTH_KEYS), (name, keys)
            else:
                seen += 1
                assert keys & (set(S3_KEYS) | {"MLFLOW_TRACKING_URI"}), (name, keys)
    assert seen >= 15


def test_tasks_that_log_are_told_which_secret_their_tracking_server_comes_from(
        ir: tuple[dict[str, Any], dict[str, Any]], base: Params) -> None:
    """The baked AFFECTFLOW_TRACKING_SECRET makes a task in a Kubeflow pod refuse the sqlite fallback
    (kfp_tracking.check_tracking_env); resolve-params, the first task, also probes the server."""
    spec, _ = ir
    tasks = _tasks(spec)
    execs = spec["deploymentSpec"]["executors"]

    def env(task: str) -> dict[str, str]:
        return {e["name"]: e["value"] for e in execs[_executor(spec, tasks[task])]["container"].get("env", [])}

    for task in ("resolve-params", "train", "evaluate", "register", "promote", "augment", "pretrain"):
        assert env(task)[kfp_tracking.TRACKING_SECRET_ENV] == base.pipeline.mlflow_secret, task
    assert kfp_tracking.TRACKING_SECRET_ENV not in env("ingest")
    relaxed = load_params(PARAMS_YAML, {"pipeline.require_tracking_server": False})
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        spec2, _ = _compile(relaxed, Path(d) / "ir.yaml")
    execs2 = spec2["deploymentSpec"]["executors"]
    assert not any(e["name"] == kfp_tracking.TRACKING_SECRET_ENV for ex in execs2.values()
                   for e in ex["container"].get("env", []))


def test_every_task_requests_cpu_and_memory_with_limits(ir: tuple[dict[str, Any], dict[str, Any]],
                                                       base: Params) -> None:
    from affectflow.orchestration.resources import DEFAULT_TASK_RESOURCES, resources_for

    spec, _ = ir
    execs = spec["deploymentSpec"]["executors"]
    assert len(execs) >= 14
    for name, ex in execs.items():
        r = ex["container"].get("resources", {})
        for field in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert r.get(field), (name, field)
        assert r["cpuRequest"] <= r["cpuLimit"] and r["memoryRequest"] <= r["memoryLimit"], name
        want = resources_for(base.pipeline, name.removeprefix("exec-"))
        assert (r["resourceCpuRequest"], r["resourceMemoryLimit"]) == (want.cpu_request, want.memory_limit), name
    assert set(DEFAULT_TASK_RESOURCES) == {n.removeprefix("exec-") for n in execs}  # a default for every task


def test_every_task_has_a_timeout(ir: tuple[dict[str, Any], dict[str, Any]], base: Params) -> None:
    """kfp-kubernetes' activeDeadlineSeconds on every task: a hung task (a stuck NCCL collective, an S3
    read that never returns) is stopped and its GPU freed; per-task values come from pipeline.resources."""
    from affectflow.orchestration.resources import resources_for

    spec, platform = ir
    for name in spec["deploymentSpec"]["executors"]:
        want = resources_for(base.pipeline, name.removeprefix("exec-")).timeout_s
        assert want and int(platform[name]["activeDeadlineSeconds"]) == want, name
    assert int(platform["exec-train"]["activeDeadlineSeconds"]) >= 12 * 3600 > int(
        platform["exec-register"]["activeDeadlineSeconds"])
    longer = load_params(PARAMS_YAML, {**GPU_SETTINGS, "pipeline.resources": {"train": {"timeout_s": 7}}})
    assert resources_for(longer.pipeline, "train").timeout_s == 7
    with pytest.raises(ConfigError, match=r"timeout_s"):
        load_params(PARAMS_YAML, {"pipeline.resources": {"train": {"timeout_s": 0}}})


def test_multi_gpu_tasks_get_a_memory_backed_dev_shm(ir: tuple[dict[str, Any], dict[str, Any]],
                                                     tmp_path: Path) -> None:
    spec, platform = ir  # gpu_limit 2
    tasks = _tasks(spec)
    for stage in STAGES:
        mounts = {m["mountPath"]: m for m in platform[_executor(spec, tasks[stage])].get("emptyDirMounts", [])}
        if stage in GPU_STAGES:
            assert mounts["/dev/shm"]["medium"] == "Memory" and mounts["/dev/shm"]["sizeLimit"], stage
        else:
            assert "/dev/shm" not in mounts, stage
    one_gpu, one_platform = _compile(load_params(PARAMS_YAML, {**GPU_SETTINGS, "pipeline.gpu_limit": 1}),
                                     tmp_path / "one.yaml")
    train = one_platform[_executor(one_gpu, _tasks(one_gpu)["train"])]
    assert "/dev/shm" not in {m["mountPath"] for m in train["emptyDirMounts"]}  # one GPU process: not needed


def test_resources_are_set_per_task_and_checked(tmp_path: Path) -> None:
    params = load_params(PARAMS_YAML, {**GPU_SETTINGS, "pipeline.resources": {
        "train": {"memory_limit": "32Gi", "gpu": 4}, "ingest": {"cpu_request": 3, "cpu_limit": 3}}})
    spec, _ = _compile(params, tmp_path / "ir.yaml")
    execs = spec["deploymentSpec"]["executors"]
    train = execs["exec-train"]["container"]["resources"]
    assert train["resourceMemoryLimit"] == "32Gi" and train["resourceMemoryRequest"] == "4Gi"  # rest: default
    assert train["accelerator"]["resourceCount"] == "4"
    assert execs["exec-augment"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert execs["exec-ingest"]["container"]["resources"]["resourceCpuRequest"] == "3"
    with pytest.raises(ConfigError, match=r"pipeline\.resources\.train\.memory_request: 64Gi is above its limit"):
        build_pipeline(load_params(PARAMS_YAML, {"pipeline.resources": {"train": {"memory_request": "64Gi"}}}))
    with pytest.raises(ConfigError, match=r"pipeline\.resources: unknown task\(s\) \['trian'\]"):  # at compile time
        build_pipeline(load_params(PARAMS_YAML, {"pipeline.resources": {"trian": {"cpu_limit": "2"}}}))
    with pytest.raises(ConfigError, match=r"pipeline\.resources\.train\.memory_limit.*not a memory quantity"):
        load_params(PARAMS_YAML, {"pipeline.resources": {"train": {"memory_limit": "lots"}}})


def test_every_task_runs_non_root_with_writable_launcher_paths(ir: tuple[dict[str, Any], dict[str, Any]],
                                                              base: Params) -> None:
    spec, platform = ir
    for name in spec["deploymentSpec"]["executors"]:
        cfg = platform[name]
        mounts = {m["mountPath"] for m in cfg["emptyDirMounts"]}
        assert {"/minio", "/s3", "/gcs", "/tmp"} <= mounts and mounts - {"/minio", "/s3", "/gcs", "/tmp"} <= {
            "/dev/shm"}, name  # /dev/shm on multi-GPU tasks (test_multi_gpu_tasks_get_a_memory_backed_dev_shm)
        sc = cfg["securityContext"]
        assert sc["runAsNonRoot"] is True and int(sc["runAsUser"]) == base.pipeline.run_as_user, name


def _config_map_env(platform: dict[str, Any], executor: str) -> set[str]:
    return {k["envVar"] for c in platform.get(executor, {}).get("configMapAsEnv", []) for k in c["keyToEnv"]
            if not c.get("optional")}


def test_train_reads_the_charts_ray_settings(ir: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path) -> None:
    """Default: Ray (if any) runs in the train pod, which holds the GPU; checkpoints go to the chart's
    shared storage. pipeline.ray_cluster: the pod submits to KubeRay and requests no GPU."""
    _spec, platform = ir
    assert _config_map_env(platform, "exec-train") == {"AFFECTFLOW_RAY_STORAGE"}
    on = load_params(PARAMS_YAML, {**GPU_SETTINGS, "pipeline.ray_cluster": True, "train.num_workers": 2})
    spec2, platform2 = _compile(on, tmp_path / "ir.yaml")
    train = spec2["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "accelerator" not in train["resources"]
    from affectflow.orchestration.images import image_for

    assert train["image"] == image_for("cpu")
    assert _config_map_env(platform2, "exec-train") == {"RAY_ADDRESS", "AFFECTFLOW_RAY_STORAGE"}
    assert "nodeSelector" not in platform2["exec-train"]
    assert spec2["deploymentSpec"]["executors"]["exec-augment"]["container"]["resources"]["accelerator"]
    with pytest.raises(ConfigError, match=r"pipeline\.ray_cluster: true needs train\.num_workers >= 1"):
        build_pipeline(load_params(PARAMS_YAML, {"pipeline.ray_cluster": True, "train.num_workers": 0}))


@pytest.mark.parametrize("settings", [{"features.device": "cpu"}, {"features.kinds": ["egemaps"]},
                                      {"pipeline.features_on_gpu": "never"}, {"pipeline.gpu_limit": 0}])
def test_features_stay_on_the_cpu_image_unless_log_mel_runs_on_a_gpu(settings: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    from affectflow.orchestration.images import image_for

    spec, _ = _compile(load_params(PARAMS_YAML, {**GPU_SETTINGS, **settings}), tmp_path / "ir.yaml")
    feat = spec["deploymentSpec"]["executors"]["exec-features"]["container"]
    assert "accelerator" not in feat["resources"] and feat["image"] == image_for("cpu")
    forced = load_params(PARAMS_YAML, {**GPU_SETTINGS, "features.device": "cpu", "pipeline.features_on_gpu": "always"})
    spec2, _ = _compile(forced, tmp_path / "ir2.yaml")
    assert spec2["deploymentSpec"]["executors"]["exec-features"]["container"]["image"] == image_for("gpu")


def test_params_and_chart_agree_on_namespace_and_names(base: Params) -> None:
    """One namespace setting: params.yaml's pipeline section must name what the chart creates."""
    values = yaml.safe_load((REPO / "charts" / "affectflow" / "values.yaml").read_text())
    kf = values["kubeflow"]
    assert base.pipeline.namespace == kf["namespace"]
    assert (base.pipeline.s3_secret, base.pipeline.mlflow_secret, base.pipeline.env_config_map) == (
        kf["s3SecretName"], kf["mlflowSecretName"], kf["envConfigMapName"])
    assert base.registry.model_name == values["serving"]["registeredModel"]


def test_retries_on_stages_not_on_registration(ir: tuple[dict[str, Any], dict[str, Any]], base: Params) -> None:
    spec, _ = ir
    tasks = _tasks(spec)
    for stage in ("ingest", "validate", "features", "augment", "pretrain", "train", "evaluate"):
        assert tasks[stage]["retryPolicy"]["maxRetryCount"] == base.pipeline.retries, stage
    for task in ("register", "promote", "record-run-status"):
        assert "retryPolicy" not in tasks[task], task


def test_caching_on_stages_off_for_side_effects(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    tasks = _tasks(spec)
    for stage in ("resolve-params", "ingest", "validate", "features", "augment", "pretrain", "train", "evaluate"):
        assert tasks[stage]["cachingOptions"].get("enableCache") is True, stage
    for task in ("register", "promote", "record-run-status", "data-stamp", "rescore"):
        assert not tasks[task].get("cachingOptions", {}).get("enableCache"), task


def test_ui_outputs_are_typed_artifacts(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    outputs = {name[len("comp-"):]: {k: v["artifactType"]["schemaTitle"]
                                     for k, v in c.get("outputDefinitions", {}).get("artifacts", {}).items()}
               for name, c in spec["components"].items()}
    assert outputs["ingest"]["manifest"] == "system.Dataset"
    assert outputs["train"]["model"] == "system.Model"
    assert outputs["evaluate"]["metrics"] == "system.Metrics"
    assert outputs["evaluate"]["confusion"] == "system.ClassificationMetrics"
    assert outputs["validate"]["report"] == "system.Markdown"
    assert {outputs[s]["report"] for s in ("augment", "pretrain", "train", "evaluate")} == {"system.HTML"}


# ----------------------------------------------------------------------------- run form
def test_run_form_is_short_and_every_field_is_described(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    fields = spec["root"]["inputDefinitions"]["parameters"]
    assert len(fields) <= 25
    assert set(fields) == {p.name for p in F.RUN_FORM} | {F.OVERRIDES, F.DATA_VERSION}
    for name, field in fields.items():
        assert len(field.get("description", "")) > 20, f"run-form field {name}: no real description"
    assert not any(p.key.split(".")[0] in ("pipeline", "studies", "predict", "s3") for p in F.RUN_FORM)


def test_run_form_defaults_are_params_yaml_values(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    fields = spec["root"]["inputDefinitions"]["parameters"]
    raw = yaml.safe_load(PARAMS_YAML.read_text())  # what a person edits is what the form shows
    assert fields["epochs"]["defaultValue"] == raw["train"]["epochs"]
    assert fields["learning_rate"]["defaultValue"] == pytest.approx(raw["train"]["lr"])
    assert fields["classes"]["defaultValue"] == raw["ingest"]["classes"]
    assert fields["corpora"]["defaultValue"][0]["name"] == raw["ingest"]["corpora"][0]["name"]
    assert fields["augment"]["parameterType"] == "BOOLEAN"
    assert fields["epochs"]["parameterType"] == "NUMBER_INTEGER"
    # lists and mappings are typed fields (JSON in the UI and the API), not YAML typed into a text box
    for name in ("corpora", "classes", "dann_targets", "cross_corpus"):
        assert fields[name]["parameterType"] == "LIST", name
    assert fields["label_map"]["parameterType"] == "STRUCT"
    assert not [n for n, f in fields.items() if f["parameterType"] == "STRING" and n not in
                (F.OVERRIDES, F.DATA_VERSION) and F.RUN_FORM_BY_NAME[n].kind() != "str"]
    assert fields[F.OVERRIDES]["defaultValue"] == "" and fields[F.DATA_VERSION]["defaultValue"] == ""


def _as_kfp_local(v: Any) -> Any:
    """kfp.local hands integers to a task as floats."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def test_resolve_params_round_trip(base: Params, tmp_path: Path) -> None:
    """What resolve-params gets -> what each stage builds back: the sections it is handed equal params.yaml's."""
    values = {k: _as_kfp_local(v) for k, v in F.run_form_defaults(base).items()}
    configs = kfp_io.resolve_params(F.base_yaml(base), values, tmp_path / "p.yaml")
    assert len(configs) == len(TABLE)
    for (stage, row), config in zip(TABLE.items(), configs, strict=True):
        rebuilt = kfp_io.stage_params(config, stage)
        handed = with_feature_kinds(base)  # features.kinds: what the enabled stages read, filled in
        for section in row.sections:
            assert getattr(rebuilt, section) == getattr(handed, section), (stage, section)
        assert config == F.stage_config(base, stage)  # canonical: identical cache keys
    full = load_params(tmp_path / "p.yaml")
    assert full == base


def test_pipeline_arguments_are_run_form_fields_then_overrides(base: Params, tmp_path: Path) -> None:
    assert F.pipeline_arguments(base, base) == {}
    changed = load_params(PARAMS_YAML, {"train.epochs": 3, "augment.enabled": True, "train.patience": 4,
                                        "features.logmel.n_mels": 40})
    args = F.pipeline_arguments(changed, base)
    assert args["epochs"] == 3 and args["augment"] is True
    assert yaml.safe_load(args[F.OVERRIDES]) == {"train.patience": 4, "features.logmel.n_mels": 40}
    # and the run rebuilds exactly `changed`
    values = {**F.run_form_defaults(base), **args}
    kfp_io.resolve_params(F.base_yaml(base), values, tmp_path / "p.yaml")
    assert load_params(tmp_path / "p.yaml") == changed


@pytest.mark.parametrize(("field", "value", "match"), [
    ("epochs", 0, r"train\.epochs"),
    (F.OVERRIDES, "train.epochz: 3", r"train\.epochz: unknown key"),
    (F.OVERRIDES, "train:\n  patience: true", r"train\.patience"),
    (F.OVERRIDES, "- a list", r"params_overrides: expected a YAML mapping"),
    (F.OVERRIDES, "pipeline.gpu_limit: 2", r"pipeline\.gpu_limit: the pipeline section is compile-time"),
    ("classes", "[a, b", r"run-form field classes"),
    ("classes", ["angry", 3], r"ingest\.classes"),  # a typed list is checked like the YAML one
])
def test_invalid_run_form_values_name_the_key(base: Params, tmp_path: Path, field: str, value: Any,
                                              match: str) -> None:
    values = {**F.run_form_defaults(base), field: value}
    with pytest.raises(ConfigError, match=match):
        kfp_io.resolve_params(F.base_yaml(base), values, tmp_path / "p.yaml")


SECTION_CHANGES = {
    "paths": {"paths.data_root": "/elsewhere"}, "audio": {"audio.max_duration_s": 20.0},
    "ingest": {"ingest.workers": 1}, "splits": {"splits.seed": 99}, "validation": {"validation.report_examples": 3},
    "features": {"features.logmel.n_mels": 40}, "train": {"train.epochs": 2}, "evaluate": {"evaluate.bootstrap": 10},
    "augment": {"augment.epochs": 2}, "pretrain": {"pretrain.epochs": 2}, "tracking": {"tracking.experiment": "x"},
    "registry": {"registry.min_uar_gain": 0.5}, "s3": {"s3.max_attempts": 9}, "predict": {"predict.batch_size": 3},
    "studies": {"studies.dann.seeds": [7]}, "monitor": {"monitor.min_clips": 50},
}


def test_every_section_has_a_change_below(base: Params) -> None:
    assert set(SECTION_CHANGES) == set(Params.model_fields) - set(F.COMPILE_TIME_SECTIONS)


@pytest.mark.parametrize("section", list(SECTION_CHANGES))
def test_a_setting_re_runs_exactly_the_stages_that_read_it(base: Params, section: str) -> None:
    """Cache keys per stage: a change in one section changes the configuration (so the cache key) of
    exactly the stages whose table row lists it — predict, study and registry knobs never re-run training."""
    changed = load_params(PARAMS_YAML, SECTION_CHANGES[section])
    moved = {s for s in TABLE if F.stage_config(base, s) != F.stage_config(changed, s)}
    assert moved == {s for s, row in TABLE.items() if section in row.sections}, section
    if section in ("registry", "predict", "studies", "evaluate", "monitor"):
        assert "train" not in moved
