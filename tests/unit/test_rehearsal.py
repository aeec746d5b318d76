"""The cluster rehearsal's cheap parts (the full run needs root, debootstrap and ~30 min: docs/REHEARSAL.md):
the committed IR walked in DAG order with conditions, OneOf outputs, the ParallelFor and the exit handler; the
launcher's executor input and placeholder resolution; the pod's env and user from the kubernetes
platform spec; every executor's entry point importable; the Dockerfile replay's parsing helpers.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from affectflow.orchestration.ir import PipelineError, documents
from affectflow.orchestration.rehearsal import dag as D
from affectflow.orchestration.rehearsal import image as I
from affectflow.orchestration.rehearsal import launcher as L
from affectflow.orchestration.rehearsal.run import readme_request
from pipelines.cli import compiled_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ir() -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = documents(compiled_path())[:2]
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


class FakeLauncher:
    """Records the order and inputs of container tasks; outputs are URIs under a fake root."""

    def __init__(self, fail: set[str] = frozenset(), shards: list[int] = (0, 1, 2)):
        self.calls: list[D.ContainerTask] = []
        self.fail = fail
        # output parameters by declared type: a list (the shard plan) and a boolean (register's gate)
        self.by_type = {"LIST": list(shards), "BOOLEAN": True}

    def __call__(self, task: D.ContainerTask) -> D.Outcome:
        self.calls.append(task)
        if task.name in self.fail:
            return D.Outcome(D.FAILED, cause="boom")
        ex = L.executor_input(task, pipeline_root="s3://b/root", pipeline="p", run_id="r1")
        arts = {k: v["artifacts"] for k, v in ex["outputs"]["artifacts"].items()}
        types = {k: v["parameterType"] for k, v in
                 ((task.component.get("outputDefinitions") or {}).get("parameters") or {}).items()}
        params = {k: self.by_type.get(types[k], f"{task.name}.{k}") for k in ex["outputs"]["parameters"]}
        return D.Outcome(D.SUCCEEDED, parameters=params, artifacts=arts)

    def names(self) -> list[str]:
        return [c.name for c in self.calls]


def enclosing_task(spec: dict[str, Any], inner: str) -> str:
    """The name of the DAG task (condition branch, loop) whose component holds the task `inner`:
    looked up in the IR, since the compiler numbers these (`condition-4`, `for-loop-2`)."""
    holders = [name for name, comp in spec["components"].items() if inner in (comp.get("dag") or {}).get("tasks", {})]
    assert len(holders) == 1, (inner, holders)
    dags = [spec["root"], *spec["components"].values()]
    found = [name for comp in dags for name, t in (comp.get("dag") or {}).get("tasks", {}).items()
             if t["componentRef"]["name"] == holders[0]]
    assert len(found) == 1, (inner, found)
    return found[0]


def test_task_order_puts_every_task_after_what_it_waits_for(ir):
    spec, _ = ir
    for name, comp in {"root": spec["root"], **spec["components"]}.items():
        if "dag" not in comp:
            continue
        tasks = comp["dag"]["tasks"]
        order = D.task_order(tasks)
        assert sorted(order) == sorted(tasks), name
        for i, t in enumerate(order):
            assert D.upstream(tasks[t]) & set(tasks) <= set(order[:i]), (name, t)


def test_task_order_rejects_a_cycle():
    tasks = {"a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}}
    with pytest.raises(PipelineError, match="cycle"):
        D.task_order(tasks)


def test_walker_runs_every_container_task_of_the_ir_with_defaults(ir):
    spec, _ = ir
    fake = FakeLauncher()
    walker = D.Walker(spec, fake, job_name="job-1")
    result = walker.run({})
    names = fake.names()
    # switches off by default: the skip tasks run instead of augment / pretrain
    assert "augment" not in names and "pretrain" not in names
    for must in ("resolve-params", "data-stamp", "ingest", "validate", "plan-features", "features.0",
                 "gather-features", "validate-features", "skip-augment", "skip-pretrain", "train", "evaluate",
                 "rescore", "register", "promote", "record-run-status"):
        assert must in names, must
    assert (names.index("ingest") < names.index("validate") < names.index("plan-features") < names.index("features.0")
            < names.index("gather-features") < names.index("validate-features") < names.index("train"))
    assert names[-1] == "record-run-status" and result.state == D.SUCCEEDED
    train = next(c for c in fake.calls if c.name == "train")
    # dsl.OneOf: the synthetic artifact comes from the branch that ran
    assert train.artifacts["synthetic"][0]["uri"] == "s3://b/root/p/r1/skip-augment/synthetic"
    assert train.artifacts["manifest"][0]["uri"] == "s3://b/root/p/r1/ingest/manifest"
    status = next(c for c in fake.calls if c.name == "record-run-status").parameters["status"]
    assert status["state"] == D.SUCCEEDED and status["pipelineJobResourceName"] == "job-1"
    assert walker.records[enclosing_task(spec, "augment")].state == D.SKIPPED
    assert walker.records[enclosing_task(spec, "pretrain")].state == D.SKIPPED


def _shard_tasks(fake: FakeLauncher) -> list[D.ContainerTask]:
    return [c for c in fake.calls if c.name.split(".")[0] == "features"]


def test_every_shard_of_the_parallel_for_runs_and_gather_sees_all_their_parts(ir):
    spec, _ = ir
    loop = enclosing_task(spec, "features")
    task = next(t for comp in (spec["root"], *spec["components"].values())
                for n, t in (comp.get("dag") or {}).get("tasks", {}).items() if n == loop)
    assert task["parameterIterator"]["items"]["inputParameter"].endswith("plan-features-Output")
    fake = FakeLauncher(shards=[0, 3, 5, 7])
    walker = D.Walker(spec, fake, job_name="j")
    assert walker.run({}).state == D.SUCCEEDED
    shards = _shard_tasks(fake)
    # one task per planned item, named apart, each with its item as the `shard` input
    assert [(c.name, c.parameters["shard"]) for c in shards] == [
        ("features.0", 0), ("features.1", 3), ("features.2", 5), ("features.3", 7)]
    assert all(c.parameters["config"] == shards[0].parameters["config"] for c in shards)
    assert all(c.artifacts["manifest"][0]["uri"].endswith("/ingest/manifest") for c in shards)
    gather = next(c for c in fake.calls if c.name == "gather-features")
    # dsl.Collected: the list of every iteration's `part`, in iteration order
    assert [a["uri"] for a in gather.artifacts["parts"]] == [f"s3://b/root/p/r1/features.{i}/part" for i in range(4)]
    assert walker.records["features.2"].state == D.SUCCEEDED


def test_an_empty_shard_plan_skips_the_loop_and_gather_gets_no_parts(ir):
    spec, _ = ir
    fake = FakeLauncher(shards=[])
    walker = D.Walker(spec, fake, job_name="j")
    assert walker.run({}).state == D.SUCCEEDED
    assert _shard_tasks(fake) == []
    assert walker.records[enclosing_task(spec, "features")].state == D.SKIPPED
    assert next(c for c in fake.calls if c.name == "gather-features").artifacts["parts"] == []


def test_a_failed_shard_fails_the_loop_and_gather_does_not_run(ir):
    spec, _ = ir
    fake = FakeLauncher(fail={"features.1"})
    walker = D.Walker(spec, fake, job_name="j")
    assert walker.run({}).state == D.FAILED
    assert [c.name for c in _shard_tasks(fake)] == ["features.0", "features.1", "features.2"]
    assert "gather-features" not in fake.names() and walker.records["gather-features"].state == D.NOT_RUN
    status = next(c for c in fake.calls if c.name == "record-run-status").parameters["status"]
    assert status["state"] == D.FAILED and "iteration 1: boom" in status["error"]["message"]


def test_raw_loop_items_and_collected_parameters():
    """A loop over a compiled-in list (`items.raw`) whose body's output parameter is collected."""
    spec = {
        "root": {"dag": {"tasks": {
            "for-loop-1": {"componentRef": {"name": "comp-for-loop-1"},
                           "parameterIterator": {"itemInput": "pipelinechannel--loop-item-param-1",
                                                 "items": {"raw": "[\"a\", \"b\"]"}}},
            "join": {"componentRef": {"name": "comp-join"}, "dependentTasks": ["for-loop-1"],
                     "inputs": {"parameters": {"words": {"taskOutputParameter": {
                         "outputParameterKey": "pipelinechannel--echo-Output", "producerTask": "for-loop-1"}}}}}}}},
        "components": {
            "comp-for-loop-1": {"dag": {
                "outputs": {"parameters": {"pipelinechannel--echo-Output": {"valueFromParameter": {
                    "outputParameterKey": "Output", "producerSubtask": "echo"}}}},
                "tasks": {"echo": {"componentRef": {"name": "comp-echo"}, "inputs": {"parameters": {
                    "word": {"componentInputParameter": "pipelinechannel--loop-item-param-1"}}}}}}},
            "comp-echo": {"executorLabel": "exec-echo"},
            "comp-join": {"executorLabel": "exec-join"}},
        "deploymentSpec": {"executors": {"exec-echo": {}, "exec-join": {}}},
    }
    seen: list[tuple[str, dict]] = []

    def launch(task: D.ContainerTask) -> D.Outcome:
        seen.append((task.name, dict(task.parameters)))
        return D.Outcome(D.SUCCEEDED, parameters={"Output": task.parameters.get("word", "").upper()})

    assert D.Walker(spec, launch, job_name="j").run({}).state == D.SUCCEEDED
    assert seen == [("echo.0", {"word": "a"}), ("echo.1", {"word": "b"}), ("join", {"words": ["A", "B"]})]


def test_loop_items_must_be_a_list():
    it = {"itemInput": "x", "items": {"inputParameter": "plan"}}
    assert D.loop_items("l", it, {"plan": "[1, 2]"}) == [1, 2]
    with pytest.raises(PipelineError, match="must be a list"):
        D.loop_items("l", it, {"plan": 3})
    with pytest.raises(PipelineError, match="not a JSON list"):
        D.loop_items("l", it, {"plan": "shard one"})
    with pytest.raises(PipelineError, match="has no value"):
        D.loop_items("l", it, {})


def test_walker_takes_the_other_branch_when_the_switch_is_on(ir):
    spec, _ = ir
    fake = FakeLauncher()
    D.Walker(spec, fake, job_name="j").run({"augment": True})
    names = fake.names()
    assert "augment" in names and "skip-augment" not in names
    train = next(c for c in fake.calls if c.name == "train")
    assert train.artifacts["synthetic"][0]["uri"].endswith("/augment/synthetic")


def test_a_failed_task_stops_its_dependents_and_the_exit_task_still_reports_it(ir):
    spec, _ = ir
    fake = FakeLauncher(fail={"train"})
    walker = D.Walker(spec, fake, job_name="j")
    result = walker.run({})
    names = fake.names()
    assert "evaluate" not in names and "register" not in names
    assert walker.records["evaluate"].state == D.NOT_RUN
    status = next(c for c in fake.calls if c.name == "record-run-status").parameters["status"]
    assert status["state"] == D.FAILED and "boom" in status["error"]["message"]
    assert result.state == D.FAILED


def test_unknown_run_argument_is_refused(ir):
    with pytest.raises(PipelineError, match="unknown pipeline arguments"):
        D.Walker(ir[0], FakeLauncher(), job_name="j").run({"epochz": 3})


@pytest.mark.parametrize(("expr", "values", "expected"), [
    ("inputs.parameter_values['a'] == true", {"a": True}, True),
    ("!(inputs.parameter_values['a'] == true)", {"a": True}, False),
    ("inputs.parameter_values['a'] != 'x' && int(inputs.parameter_values['n']) > 2", {"a": "y", "n": "3"}, True),
    ("inputs.parameter_values['a'] == 'x' || inputs.parameter_values['b'] == false", {"a": "y", "b": False}, True),
])
def test_conditions_are_evaluated_like_kfp(expr, values, expected):
    assert D.evaluate_condition(expr, values) is expected


def test_a_condition_cannot_run_code():
    with pytest.raises(PipelineError, match="unsupported"):
        D.evaluate_condition("__import__('os').system('true') == 0", {})
    with pytest.raises(PipelineError, match="names input"):
        D.evaluate_condition("inputs.parameter_values['missing'] == true", {})


def _task(ir, name: str, component: str, parameters: dict, artifacts: dict | None = None) -> D.ContainerTask:
    spec, _ = ir
    comp = spec["components"][component]
    label = comp["executorLabel"]
    return D.ContainerTask(name=name, component=comp, executor_label=label,
                           executor=spec["deploymentSpec"]["executors"][label], parameters=parameters,
                           artifacts=artifacts or {})


def test_executor_input_and_command_are_resolved_as_the_launcher_does(ir):
    manifest = [{"name": "manifest", "uri": "s3://b/root/p/r1/ingest/manifest", "metadata": {},
                 "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}]
    task = _task(ir, "validate", "comp-validate", {"config": "paths: {}"}, {"manifest": manifest})
    ex = L.executor_input(task, pipeline_root="s3://b/root", pipeline="p", run_id="r1")
    argv = L.resolve_command(task, ex, job_name="job-1", pipeline_root="s3://b/root", run_id="r1")
    assert argv[:2] == ["sh", "-ec"] and "{{$}}" not in argv
    handed = json.loads(argv[argv.index("--executor_input") + 1])
    assert handed["inputs"]["artifacts"]["manifest"]["artifacts"][0]["uri"] == manifest[0]["uri"]
    assert handed["inputs"]["parameterValues"] == {"config": "paths: {}"}
    report = handed["outputs"]["artifacts"]["report"]["artifacts"][0]
    assert report["uri"] == "s3://b/root/p/r1/validate/report"
    assert handed["outputs"]["outputFile"] == L.OUTPUT_METADATA
    assert argv[argv.index("--function_to_execute") + 1] == "validate"
    assert L.local_path(report["uri"]) == "/s3/b/root/p/r1/validate/report"


def test_job_name_placeholder_in_a_parameter_is_resolved(ir):
    task = _task(ir, "promote", "comp-promote", {"config": "x", "run_name": "{{$.pipeline_job_name}}"},
                 {"registration": []})
    ex = L.executor_input(task, pipeline_root="s3://b/root", pipeline="p", run_id="r1")
    argv = L.resolve_command(task, ex, job_name="job-7", pipeline_root="s3://b/root", run_id="r1")
    handed = json.loads(argv[argv.index("--executor_input") + 1])
    assert handed["inputs"]["parameterValues"]["run_name"] == "job-7"


def test_pod_env_maps_secrets_and_config_maps_and_refuses_a_missing_required_one(ir):
    _, platform = ir
    task = _task(ir, "train", "comp-train", {})
    image = I.Image(key="k", layers=(), env={"PATH": "/opt/venv/bin:/usr/bin"}, workdir="/app", user="10001:10001",
                    cmd=())
    secrets = {"affectflow-s3": {k: f"v-{k}" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                                       "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")},
               "affectflow-mlflow": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}}
    maps = {"affectflow-pipeline-env": {"AFFECTFLOW_RAY_STORAGE": "s3://b/ray", "RAY_ADDRESS": ""}}
    env = L.pod_env(task, image, platform, secrets, maps, "/home/affectflow")
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1" and env["AWS_ENDPOINT_URL"] == "v-AWS_ENDPOINT_URL"
    assert env["AFFECTFLOW_RAY_STORAGE"] == "s3://b/ray" and env["PATH"].startswith("/opt/venv/bin")
    assert "MLFLOW_TRACKING_USERNAME" not in env  # optional secret key absent: skipped, as kubelet does
    assert L.pod_user(task, platform) == "10001:10001"
    with pytest.raises(PipelineError, match="affectflow-mlflow"):
        L.pod_env(task, image, platform, {"affectflow-s3": secrets["affectflow-s3"]}, maps, "/")


def test_every_executor_entry_point_is_importable(ir, tmp_path, monkeypatch):
    """What `python3 -m kfp.dsl.executor_main --component_module_path ... --function_to_execute f` loads."""
    spec, _ = ir
    monkeypatch.syspath_prepend(str(tmp_path))
    for label, ex in spec["deploymentSpec"]["executors"].items():
        command, args = ex["container"]["command"], ex["container"]["args"]
        program = command[3]  # sh -ec <script> <program>: the program is the script's $0
        path = tmp_path / f"{label.replace('-', '_')}.py"
        path.write_text(program)
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        fn = args[args.index("--function_to_execute") + 1]
        assert callable(getattr(module, fn)), label


def test_readme_request_is_found_and_is_the_v2_shape():
    template, path = readme_request(REPO / "README.md")
    body = json.loads(template % "QUJD")
    assert body["inputs"][0]["datatype"] == "BYTES" and body["inputs"][0]["data"] == ["QUJD"]
    assert path.startswith("/v2/models/") and path.endswith("/infer")


def test_dockerfile_variables_and_env_pairs():
    assert I.expand("${A}/x:$B:${C:-d}", {"A": "1", "B": "2"}) == "1/x:2:d"
    assert I.key_values('PATH=/opt/venv/bin:$PATH X="a b"', {"PATH": "/usr/bin"}) == {
        "PATH": "/opt/venv/bin:/usr/bin", "X": "a b"}
    assert I.key_values("TORCH_VERSION=2.13.0", {}) == {"TORCH_VERSION": "2.13.0"}
    assert I.key_values("LEGACY some value", {}) == {"LEGACY": "some value"}


def test_dockerignore_matching_and_copy_sources(tmp_path):
    patterns = ["**/__pycache__", "tests", "*.db", "!keep.db"]
    assert I.ignored("src/a/__pycache__/x.pyc", patterns)
    assert I.ignored("tests/unit/test_x.py", patterns)
    assert I.ignored("mlflow.db", patterns) and not I.ignored("keep.db", patterns)
    assert not I.ignored("src/a/b.py", patterns)
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "src" / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"\0")
    files = I.context_files(tmp_path, ["src"], patterns)
    assert [rel for _, rel in files] == ["pkg/m.py"]
    with pytest.raises(PipelineError, match="COPY components"):
        I.context_files(tmp_path, ["components"], patterns)


def test_apt_mirror_is_read_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert I.apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb http://other.example/debian bookworm main\n")
    assert I.apt_mirror(tmp_path) == "http://other.example/debian"
    (tmp_path / "sources.list").write_text("")
    with pytest.raises(PipelineError, match="no apt source"):
        I.apt_mirror(tmp_path)


class FakeS3:
    """The three calls the launcher makes, over a dict of (bucket, key) -> bytes."""

    def __init__(self, objects: dict[tuple[str, str], bytes]):
        self.objects = dict(objects)

    def get_paginator(self, name: str):
        store = self.objects

        class Pages:
            def paginate(self, Bucket: str, Prefix: str):  # boto3's argument names
                yield {"Contents": [{"Key": k} for (b, k) in sorted(store) if b == Bucket and k.startswith(Prefix)]}
        return Pages()

    def download_file(self, bucket: str, key: str, path: str) -> None:
        Path(path).write_bytes(self.objects[(bucket, key)])

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        self.objects[(bucket, key)] = Path(path).read_bytes()


def _launcher(tmp_path: Path, s3: FakeS3) -> L.Launcher:
    image = I.Image(key="k", layers=(), env={}, workdir="/app", user=None, cmd=())
    return L.Launcher(image=image, s3=s3, pipeline_root="s3://b/root", pipeline="p", run_id="r1", job_name="j",
                      platform={}, secrets={}, config_maps={}, work=tmp_path)


def test_staging_downloads_directory_and_file_artifacts_to_kfp_local_paths(tmp_path):
    s3 = FakeS3({("b", "root/p/r1/ingest/manifest/manifest.parquet"): b"PAR1",
                 ("b", "root/p/r1/ingest/manifest/sub/x.json"): b"{}",
                 ("b", "root/p/r1/ingest/summary"): b"{\"n\": 1}"})
    launcher = _launcher(tmp_path, s3)
    volumes = {d: tmp_path / "v" / d.strip("/") for d in L.EMPTY_DIRS}
    for uri in ("s3://b/root/p/r1/ingest/manifest", "s3://b/root/p/r1/ingest/summary"):
        launcher._download(uri, launcher._host(L.local_path(uri), volumes))
    base = tmp_path / "v" / "s3" / "b" / "root" / "p" / "r1" / "ingest"
    assert (base / "manifest" / "manifest.parquet").read_bytes() == b"PAR1"
    assert (base / "manifest" / "sub" / "x.json").is_file() and (base / "summary").read_bytes() == b"{\"n\": 1}"
    with pytest.raises(PipelineError, match="not in S3"):
        launcher._download("s3://b/root/p/r1/nothing", tmp_path / "n")
    with pytest.raises(PipelineError, match="not on a volume"):
        launcher._host("/etc/passwd", volumes)


def test_collect_uploads_outputs_and_reads_output_parameters(ir, tmp_path):
    s3 = FakeS3({})
    launcher = _launcher(tmp_path, s3)
    task = _task(ir, "register", "comp-register", {"config": "x"})
    ex = L.executor_input(task, pipeline_root="s3://b/root", pipeline="p", run_id="r1")
    volumes = {d: tmp_path / "v" / d.strip("/") for d in L.EMPTY_DIRS}
    result_uri = ex["outputs"]["artifacts"]["result"]["artifacts"][0]["uri"]
    out = launcher._host(L.local_path(result_uri), volumes)
    out.parent.mkdir(parents=True)
    out.write_text("{}")
    meta = launcher._host(L.OUTPUT_METADATA, volumes)
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"parameterValues": {"Output": True}}))
    for key in ex["outputs"]["artifacts"]:  # the task's other outputs
        if key != "result":
            p = launcher._host(L.local_path(ex["outputs"]["artifacts"][key]["artifacts"][0]["uri"]), volumes)
            p.write_text("x")
    outcome = launcher._collect(ex, volumes)
    assert outcome.state == D.SUCCEEDED and outcome.parameters == {"Output": True}
    assert s3.objects[("b", "root/p/r1/register/result")] == b"{}"
    # an output the task did not write fails the task, naming the artifact
    (launcher._host(L.local_path(result_uri), volumes)).unlink()
    with pytest.raises(PipelineError, match="wrote nothing"):
        launcher._collect(ex, volumes)


def test_pod_deadline_and_volumes_come_from_the_platform_spec(ir):
    _, platform = ir
    task = _task(ir, "train", "comp-train", {})
    deadline = platform["exec-train"].get("activeDeadlineSeconds")
    assert L.pod_deadline(task, platform, None) == (float(deadline) if deadline else None)
    assert L.pod_deadline(task, platform, 60) == 60.0
    volumes = L.pod_volumes(task, platform)
    assert set(L.EMPTY_DIRS) <= set(volumes)
    assert {m["mountPath"] for m in platform["exec-train"]["emptyDirMounts"]} <= set(volumes)


def test_mlflow_runs_behind_the_charts_basic_auth_and_its_clients_get_the_admin(monkeypatch, tmp_path):
    """The rehearsal's MLflow is started as the chart starts it by default: the chart's own
    files/mlflow_auth.py, then `mlflow server --app-name=basic-auth`, the admin only in the environment;
    the predictor gets the admin as MLflow client credentials."""
    from affectflow.orchestration.rehearsal import services as S

    started: dict[str, tuple[list[str], dict[str, str]]] = {}
    monkeypatch.setattr(S, "start_server", lambda name, image, cmd, env, work, **kw: started.setdefault(
        name, (cmd, dict(env))) and S.Server(name, None, tmp_path, tmp_path / "log"))  # type: ignore[arg-type]
    monkeypatch.setattr(S, "wait_for", lambda *a, **k: None)
    store = S.S3Store(endpoint="http://127.0.0.1:1", bucket="b")
    admin = S.MlflowAdmin.generate()
    script = (Path(__file__).resolve().parents[2] / "charts" / "affectflow" / "files" / "mlflow_auth.py").read_text()
    S.mlflow_server(None, store, tmp_path, 5000, auth_script=script, admin=admin)  # type: ignore[arg-type]
    cmd, env = started["mlflow"]
    assert cmd[:3] == ["python", "-c", script] and cmd[3:6] == ["mlflow", "server", "--app-name=basic-auth"]
    assert admin.password not in " ".join(cmd) and not [a for a in cmd if a.startswith("--backend-store-uri")]
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (admin.username, admin.password)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:") and env["AUTH_DEFAULT_PERMISSION"] == "NO_PERMISSIONS"
    with pytest.raises(PipelineError, match=r"mlflow_auth\.py"):
        S.mlflow_server(None, store, tmp_path, 5000, admin=admin)  # type: ignore[arg-type]
    S.predictor(None, store, tmp_path, tracking_uri="http://127.0.0.1:5000", model_name="m", registered="r",  # type: ignore[arg-type]
                port=8080, admin=admin)
    _, env = started["predictor"]
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (admin.username, admin.password)
