"""`affectflow pipeline ...`: compile/check, the cron rule, and upload / submit / schedule against a
fake kfp.Client (no cluster): what is sent, that a bad cron never reaches the client, and that
scheduling twice leaves one recurring run (found across list pages; changed settings need --replace)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml

from affectflow import cli
from affectflow.config import load_params
from affectflow.orchestration import cluster as P
from affectflow.orchestration.run_form import DATA_VERSION, OVERRIDES

REPO = Path(__file__).resolve().parents[2]


class FakeClient:
    """Records calls the way kfp.Client would receive them; returns kfp_server_api-like objects."""

    instances: ClassVar[list[FakeClient]] = []

    def __init__(self, host: str, namespace: str | None = None, existing: dict[str, str] | None = None):
        self.host, self.namespace = host, namespace
        self.pipelines = dict(existing or {})
        self.namespaced: dict[tuple[str, str], str] = {}  # (namespace, name) -> id: a profile's own pipelines
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.recurring: dict[str, Any] = {}  # id -> V2beta1RecurringRun, in creation order
        self.created = 0
        self.fail_delete = False
        FakeClient.instances.append(self)

    def get_pipeline_id(self, name: str) -> str | None:
        self.calls.append(("get_pipeline_id", {"name": name}))
        return self.pipelines.get(name)

    def list_pipelines(self, **kw: Any) -> Any:
        """kfp.Client.list_pipelines with a display_name EQUALS filter, scoped by namespace."""
        self.calls.append(("list_pipelines", kw))
        wanted = json.loads(kw["filter"])["predicates"][0]["stringValue"]
        hits = [SimpleNamespace(pipeline_id=pid) for (ns, n), pid in self.namespaced.items()
                if n == wanted and ns == kw.get("namespace")]
        return SimpleNamespace(pipelines=hits or None)

    def upload_pipeline(self, **kw: Any) -> Any:
        self.calls.append(("upload_pipeline", kw))
        self.uploaded = Path(kw["pipeline_package_path"]).read_text()  # gone after the call (a temp file)
        if kw.get("namespace"):
            self.namespaced[(kw["namespace"], kw["pipeline_name"])] = "pid-1"
        else:
            self.pipelines[kw["pipeline_name"]] = "pid-1"
        return SimpleNamespace(pipeline_id="pid-1")

    def list_pipeline_versions(self, **kw: Any) -> Any:
        self.calls.append(("list_pipeline_versions", kw))
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(pipeline_version_id="vid-1", display_name="v1")])

    def upload_pipeline_version(self, **kw: Any) -> Any:
        self.calls.append(("upload_pipeline_version", kw))
        return SimpleNamespace(pipeline_version_id="vid-2")

    def create_run_from_pipeline_package(self, pipeline_file: str, **kw: Any) -> Any:
        self.calls.append(("create_run_from_pipeline_package", {"pipeline_file": pipeline_file, **kw}))
        return SimpleNamespace(run_id="run-1")

    def create_experiment(self, name: str, namespace: str | None = None, description: str | None = None) -> Any:
        self.calls.append(("create_experiment", {"name": name, "namespace": namespace}))
        return SimpleNamespace(experiment_id="exp-1")

    def create_recurring_run(self, **kw: Any) -> Any:
        self.calls.append(("create_recurring_run", kw))
        return self.add_recurring_run(kw["experiment_id"], kw["job_name"], kw["cron_expression"],
                                      kw["max_concurrency"], kw["params"], kw.get("description"))

    def add_recurring_run(self, experiment_id: str, name: str, cron: str, max_concurrency: int,
                          params: dict[str, Any] | None = None, description: str | None = None) -> Any:
        """Store a recurring run the way the API returns it: kfp_server_api models, the int64
        max_concurrency as a string, no description unless one was sent."""
        import kfp_server_api as api

        self.created += 1
        run = api.V2beta1RecurringRun(
            recurring_run_id=f"rr-{self.created}", display_name=name, experiment_id=experiment_id,
            description=description, max_concurrency=str(max_concurrency), no_catchup=True,
            trigger=api.V2beta1Trigger(cron_schedule=api.V2beta1CronSchedule(cron=cron)),
            runtime_config=api.V2beta1RuntimeConfig(parameters=dict(params or {})), mode=api.RecurringRunMode.ENABLE)
        self.recurring[run.recurring_run_id] = run
        return run

    def list_recurring_runs(self, page_token: str = "", page_size: int = 10, sort_by: str = "",
                            experiment_id: str | None = None, namespace: str | None = None,
                            filter: str | None = None) -> Any:
        """Paginated like the API: the token is an offset here, and absent on the last page."""
        import kfp_server_api as api

        self.calls.append(("list_recurring_runs", {"page_token": page_token, "page_size": page_size,
                                                   "experiment_id": experiment_id, "namespace": namespace}))
        runs = [r for r in self.recurring.values() if experiment_id in (None, r.experiment_id)]
        start = int(page_token or 0)
        end = start + page_size
        return api.V2beta1ListRecurringRunsResponse(recurring_runs=runs[start:end] or None, total_size=len(runs),
                                                    next_page_token=str(end) if end < len(runs) else None)

    def delete_recurring_run(self, recurring_run_id: str) -> dict[str, Any]:
        self.calls.append(("delete_recurring_run", {"recurring_run_id": recurring_run_id}))
        if self.fail_delete:
            raise RuntimeError("(403) Forbidden")
        del self.recurring[recurring_run_id]
        return {}

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "ir.yaml"
    path.write_text("pipelineInfo: {name: affectflow-train}\n")
    return path


@pytest.fixture
def fake_kfp(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    import kfp

    FakeClient.instances = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    return FakeClient


# ----------------------------------------------------------------------------- cron
@pytest.mark.parametrize("expr", ["0 0 3 * * 1", "0 */15 * * * *", "0 0 9 ? * 2-6", "30 5 4 1 * *"])
def test_six_field_crons_are_accepted(expr: str) -> None:
    assert P.validate_cron(expr) == expr


@pytest.mark.parametrize("expr,why", [("0 3 * * 1", "6 fields"), ("0 0 3 * * 1 2027", "6 fields"),
                                      ("61 0 3 * * 1", "not a valid"), ("0 0 25 * * *", "not a valid"),
                                      ("every monday", "6 fields")])
def test_bad_crons_are_rejected_with_the_reason(expr: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        P.validate_cron(expr)


def test_next_fire_times_read_seconds_first() -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)  # a Thursday
    assert P.next_fire_times("0 0 3 * * 1", 2, start) == ["2026-01-05T03:00:00+00:00", "2026-01-12T03:00:00+00:00"]


# ----------------------------------------------------------------------------- client operations
def test_upload_creates_the_pipeline_then_adds_versions(package: Path) -> None:
    client = FakeClient("http://kfp")
    first = P.upload(client, package)
    assert first == {"pipeline_id": "pid-1", "version_id": "vid-1", "version": "v1", "created_pipeline": True}
    assert client.calls[1] == ("upload_pipeline", {"pipeline_package_path": str(package),
                                                   "pipeline_name": P.PIPELINE_NAME, "description": None,
                                                   "namespace": None})
    second = P.upload(client, package, version="2026-06-01")
    assert second["created_pipeline"] is False and second["version_id"] == "vid-2"
    kw = client.calls[-1][1]
    assert (kw["pipeline_id"], kw["pipeline_version_name"]) == ("pid-1", "2026-06-01")


def test_upload_into_a_profile_namespace(package: Path) -> None:
    """Multi-user Kubeflow: the pipeline is uploaded to, and found again in, the profile's namespace."""
    client = FakeClient("http://kfp", existing={P.PIPELINE_NAME: "shared-id"})
    first = P.upload(client, package, namespace="kubeflow-user-example-com")
    assert first["created_pipeline"] is True  # the shared pipeline of that name is not the profile's
    assert dict(client.calls)["upload_pipeline"]["namespace"] == "kubeflow-user-example-com"
    second = P.upload(client, package, namespace="kubeflow-user-example-com", version="v2")
    assert second["created_pipeline"] is False and second["pipeline_id"] == "pid-1"
    assert client.calls[-1][0] == "upload_pipeline_version"


def test_cli_upload_passes_the_namespace(fake_kfp: type[FakeClient], package: Path) -> None:
    rc = cli.main(["pipeline", "upload", "--host", "http://kfp", "--package", str(package),
                   "--namespace", "team-a"])
    assert rc == 0
    (client,) = fake_kfp.instances
    assert dict(client.calls)["upload_pipeline"]["namespace"] == "team-a"


def test_cli_upload_with_set_makes_them_the_run_form_defaults(fake_kfp: type[FakeClient]) -> None:
    """The chart's registration Job: the cluster's data root becomes the uploaded pipeline's default, so UI
    runs and runs that do not set it read the corpora from S3, not the compiled ../shared/data."""
    package = REPO / "pipelines" / "compiled" / "affectflow-train.yaml"
    rc = cli.main(["pipeline", "upload", "--host", "http://kfp", "--package", str(package),
                   "--set", "paths.data_root=s3://affectflow/corpora", "--set", "ingest.classes=[happy, sad]"])
    assert rc == 0
    (client,) = fake_kfp.instances
    spec = next(yaml.safe_load_all(client.uploaded))
    fields = spec["root"]["inputDefinitions"]["parameters"]
    assert fields["data_root"]["defaultValue"] == "s3://affectflow/corpora"
    assert fields["classes"]["defaultValue"] == ["happy", "sad"]
    original = next(yaml.safe_load_all(package.read_text()))
    assert original["root"]["inputDefinitions"]["parameters"]["data_root"]["defaultValue"] != "s3://affectflow/corpora"


def test_upload_names_a_missing_package(tmp_path: Path) -> None:
    with pytest.raises(P.PipelineError, match=r"ir\.yaml"):
        P.upload(FakeClient("http://kfp"), tmp_path / "ir.yaml")


def test_submit_sends_arguments_and_experiment(package: Path) -> None:
    client = FakeClient("http://kfp")
    res = P.submit(client, package, {"train__epochs": 3}, experiment="affectflow", run_name="r1", cache=False)
    assert res == {"run_id": "run-1", "run_name": "r1", "experiment": "affectflow"}
    name, kw = client.calls[0]
    assert name == "create_run_from_pipeline_package"
    assert kw["arguments"] == {"train__epochs": 3} and kw["experiment_name"] == "affectflow"
    assert kw["enable_caching"] is False


def test_schedule_sends_cron_concurrency_and_no_catchup(package: Path) -> None:
    client = FakeClient("http://kfp")
    res = P.schedule(client, package, {}, cron="0 0 3 * * 1", experiment="affectflow", max_concurrency=1)
    assert res["recurring_run_id"] == "rr-1" and len(res["next"]) == 3
    kw = dict(client.calls)["create_recurring_run"]
    assert kw["cron_expression"] == "0 0 3 * * 1"
    assert kw["max_concurrency"] == 1 and kw["no_catchup"] is True and kw["enabled"] is True
    assert kw["experiment_id"] == "exp-1" and kw["pipeline_package_path"] == str(package)


def test_schedule_validates_before_sending(package: Path) -> None:
    client = FakeClient("http://kfp")
    with pytest.raises(ValueError, match="6 fields"):
        P.schedule(client, package, {}, cron="0 3 * * 1", experiment="affectflow", max_concurrency=1)
    with pytest.raises(ValueError, match="max_concurrency"):
        P.schedule(client, package, {}, cron="0 0 3 * * 1", experiment="affectflow", max_concurrency=0)
    assert client.calls == []


# ----------------------------------------------------------------------------- idempotent schedule
WEEKLY = {"cron": "0 0 3 * * 1", "experiment": "affectflow", "max_concurrency": 1}


def creates(client: FakeClient) -> int:
    return client.names().count("create_recurring_run")


def test_scheduling_twice_leaves_one_recurring_run(package: Path) -> None:
    client = FakeClient("http://kfp")
    first = P.schedule(client, package, {"train__epochs": 7}, **WEEKLY)
    again = P.schedule(client, package, {"train__epochs": 7}, **WEEKLY)
    assert (first["action"], again["action"]) == ("created", "unchanged")
    assert again["recurring_run_id"] == first["recurring_run_id"] == "rr-1"
    assert list(client.recurring) == ["rr-1"] and creates(client) == 1
    assert "delete_recurring_run" not in client.names()


def test_the_existing_schedule_is_found_on_a_later_page(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "SCHEDULE_PAGE_SIZE", 2)
    client = FakeClient("http://kfp")
    for k in range(5):  # other schedules of the experiment fill the first pages
        client.add_recurring_run("exp-1", f"other-{k}", "0 0 1 * * *", 1)
    client.add_recurring_run("exp-2", f"{P.PIPELINE_NAME}-schedule", "0 0 1 * * *", 1)  # another experiment
    first = P.schedule(client, package, {}, **WEEKLY)
    assert first["action"] == "created"
    client.calls.clear()
    assert P.schedule(client, package, {}, **WEEKLY)["action"] == "unchanged"
    tokens = [kw["page_token"] for name, kw in client.calls if name == "list_recurring_runs"]
    assert tokens == ["", "2", "4"]  # 6 runs in exp-1, 2 a page: the new one is on the third
    assert all(kw["experiment_id"] == "exp-1" and kw["page_size"] == 2
               for name, kw in client.calls if name == "list_recurring_runs")
    with pytest.raises(P.ScheduleConflictError, match=first["recurring_run_id"]):
        P.schedule(client, package, {}, **{**WEEKLY, "cron": "0 0 4 * * 1"})


@pytest.mark.parametrize("change,why", [
    ({"cron": "0 30 2 * * *"}, "cron: '0 0 3 \\* \\* 1' -> '0 30 2 \\* \\* \\*'"),
    ({"max_concurrency": 2}, "max_concurrency: 1 -> 2"),
    ({"arguments": {"train__epochs": 9}}, "params: .*7.* -> .*9"),
    ({"cache": False}, "caching on.* -> .*caching off"),
])
def test_changed_settings_are_refused_naming_the_recurring_run(package: Path, change: dict[str, Any],
                                                               why: str) -> None:
    client = FakeClient("http://kfp")
    P.schedule(client, package, {"train__epochs": 7}, **WEEKLY)
    arguments = change.pop("arguments", {"train__epochs": 7})
    with pytest.raises(P.ScheduleConflictError, match=why) as e:
        P.schedule(client, package, arguments, **{**WEEKLY, **change})
    assert "rr-1" in str(e.value) and "--replace" in str(e.value)
    assert creates(client) == 1 and list(client.recurring) == ["rr-1"]


def test_a_recompiled_ir_is_a_change_but_a_reformatted_one_is_not(package: Path) -> None:
    client = FakeClient("http://kfp")
    P.schedule(client, package, {}, **WEEKLY)
    package.write_text("pipelineInfo:\n  name: affectflow-train\n")  # same YAML, other text
    assert P.schedule(client, package, {}, **WEEKLY)["action"] == "unchanged"
    package.write_text("pipelineInfo: {name: affectflow-train, description: new}\n")
    with pytest.raises(P.ScheduleConflictError, match="IR sha256"):
        P.schedule(client, package, {}, **WEEKLY)


def test_replace_creates_the_new_schedule_and_deletes_the_old(package: Path) -> None:
    client = FakeClient("http://kfp")
    P.schedule(client, package, {}, **WEEKLY)
    res = P.schedule(client, package, {}, **{**WEEKLY, "cron": "0 30 2 * * *"}, replace=True)
    assert res["action"] == "replaced" and res["replaced"] == ["rr-1"] and res["recurring_run_id"] == "rr-2"
    assert client.names()[-2:] == ["create_recurring_run", "delete_recurring_run"]  # the old one goes last
    assert list(client.recurring) == ["rr-2"]
    assert client.recurring["rr-2"].trigger.cron_schedule.cron == "0 30 2 * * *"
    # unchanged settings with --replace: nothing is replaced
    assert P.schedule(client, package, {}, **{**WEEKLY, "cron": "0 30 2 * * *"}, replace=True)["action"] == "unchanged"


def test_duplicates_from_earlier_runs_are_refused_then_collapsed(package: Path) -> None:
    client = FakeClient("http://kfp")
    name = f"{P.PIPELINE_NAME}-schedule"
    for _ in range(2):  # what the old `schedule` left after two calls
        client.add_recurring_run("exp-1", name, "0 0 3 * * 1", 1)
    with pytest.raises(P.ScheduleConflictError, match=r"2 recurring runs .*\(rr-1, rr-2\)"):
        P.schedule(client, package, {}, **WEEKLY)
    assert creates(client) == 0
    res = P.schedule(client, package, {}, **WEEKLY, replace=True)
    assert res["replaced"] == ["rr-1", "rr-2"] and list(client.recurring) == ["rr-3"]


def test_a_failed_delete_names_both_recurring_runs(package: Path) -> None:
    client = FakeClient("http://kfp")
    P.schedule(client, package, {}, **WEEKLY)
    client.fail_delete = True
    with pytest.raises(P.PipelineError, match=r"created recurring run rr-2 .* delete the old one rr-1: \(403\)"):
        P.schedule(client, package, {}, **{**WEEKLY, "max_concurrency": 3}, replace=True)


def test_client_needs_a_host() -> None:
    with pytest.raises(P.PipelineError, match=r"pipeline\.host"):
        P.kfp_client(load_params(None), factory=FakeClient)
    client = P.kfp_client(load_params(None, {"pipeline.host": "http://kfp:8888"}), factory=FakeClient)
    assert (client.host, client.namespace) == ("http://kfp:8888", "kubeflow")


# ----------------------------------------------------------------------------- CLI
def test_cli_compile_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ir.yaml"
    params = ["--params", str(REPO / "params.yaml")]
    assert cli.main(["pipeline", *params, "compile", "--out", str(out)]) == 0
    assert out.is_file() and "affectflow-train" in out.read_text()
    assert cli.main(["pipeline", *params, "compile", "--check", "--out", str(out)]) == 0
    # --set after the action applies too
    assert cli.main(["pipeline", *params, "compile", "--check", "--out", str(out), "--set", "train.epochs=2"]) == 1
    assert "stale" in capsys.readouterr().err


def test_cli_run_needs_local(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pipeline", "run"]) == 2
    assert "--local" in capsys.readouterr().err


def test_cli_schedule_sends_overrides_as_arguments(fake_kfp: type[FakeClient], package: Path) -> None:
    rc = cli.main(["pipeline", "--params", str(REPO / "params.yaml"), "schedule", "--host", "http://kfp",
                   "--package", str(package), "--cron", "0 30 2 * * *", "--max-concurrency", "2",
                   "--set", "train.epochs=7", "--job-name", "nightly"])
    assert rc == 0
    (client,) = fake_kfp.instances
    kw = dict(client.calls)["create_recurring_run"]
    assert kw["params"] == {"epochs": 7}
    assert (kw["cron_expression"], kw["max_concurrency"], kw["job_name"]) == ("0 30 2 * * *", 2, "nightly")


def test_cli_schedule_rejects_a_bad_cron_without_calling_the_cluster(
        fake_kfp: type[FakeClient], package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["pipeline", "schedule", "--host", "http://kfp", "--package", str(package), "--cron", "0 3 * * *"])
    assert rc == 1
    assert "6 fields" in capsys.readouterr().err
    assert all(c.calls == [] for c in fake_kfp.instances)


def test_cli_schedule_is_idempotent_and_replace_swaps(monkeypatch: pytest.MonkeyPatch, package: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import kfp

    cluster = FakeClient("http://kfp")  # one cluster for every command below
    monkeypatch.setattr(kfp, "Client", lambda **kw: cluster)
    argv = ["pipeline", "--params", str(REPO / "params.yaml"), "schedule", "--host", "http://kfp",
            "--package", str(package), "--cron", "0 0 3 * * 1"]
    assert cli.main(argv) == 0 and "schedule created" in capsys.readouterr().out
    assert cli.main(argv) == 0 and "schedule unchanged" in capsys.readouterr().out
    changed = [*argv[:-1], "0 0 4 * * 1"]
    assert cli.main(changed) == 1
    err = capsys.readouterr().err
    assert "rr-1" in err and "--replace" in err
    assert cli.main([*changed, "--replace"]) == 0 and "schedule replaced" in capsys.readouterr().out
    assert list(cluster.recurring) == ["rr-2"] and cluster.names().count("create_recurring_run") == 2


def test_cli_submit_carries_the_data_version(fake_kfp: type[FakeClient], package: Path) -> None:
    rc = cli.main(["pipeline", "submit", "--host", "http://kfp", "--package", str(package),
                   "--data-version", "dvc.lock:abc", "--experiment", "nightly"])
    assert rc == 0
    (client,) = fake_kfp.instances
    kw = dict(client.calls)["create_run_from_pipeline_package"]
    assert kw["arguments"] == {DATA_VERSION: "dvc.lock:abc"}
    assert kw["experiment_name"] == "nightly" and kw["namespace"] == "kubeflow"


def test_cli_upload_refuses_a_stale_committed_ir(fake_kfp: type[FakeClient], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.cli

    monkeypatch.setattr(pipelines.cli, "stale", lambda pipeline, path=None: True)
    rc = cli.main(["pipeline", "upload", "--host", "http://kfp"])
    assert rc == 1
    assert "stale" in capsys.readouterr().err


def test_cli_schedule_sends_other_settings_as_params_overrides(fake_kfp: type[FakeClient], package: Path) -> None:
    rc = cli.main(["pipeline", "--params", str(REPO / "params.yaml"), "schedule", "--host", "http://kfp",
                   "--package", str(package), "--set", "train.patience=4", "--set", "train.epochs=3", "--job-name", "weekly"])
    assert rc == 0
    (client,) = fake_kfp.instances
    params = dict(client.calls)["create_recurring_run"]["params"]
    assert params["epochs"] == 3
    assert yaml.safe_load(params[OVERRIDES]) == {"train.patience": 4}


def test_step_writes_the_placeholder_when_switched_off(tmp_path: Path) -> None:
    from affectflow.contracts.workdir import SKIPPED, optional_dir
    from affectflow.stages import StageError
    from affectflow.stages.runner import run_stage

    params = load_params(None, {"paths.workdir": str(tmp_path), "augment.enabled": False})
    (tmp_path / "augment").mkdir()
    (tmp_path / "augment" / "synthetic.npz").write_bytes(b"old")  # a previous enabled run
    res = run_stage(params, "augment")
    assert res.summary["skipped"] is True
    assert sorted(p.name for p in (tmp_path / "augment").iterdir()) == [SKIPPED]
    assert optional_dir(tmp_path / "augment") is None
    with pytest.raises(StageError, match="stage evaluate: input model"):
        run_stage(params, "evaluate")
    assert cli.main(["step", "augment", "--set", f"paths.workdir={tmp_path}"]) == 0
