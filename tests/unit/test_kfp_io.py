"""affectflow.orchestration.kfp_io / kfp_reports / kfp_tracking: what the components do around a stage
call, without KFP running them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from affectflow.contracts.evaluation import parse_evaluation
from affectflow.orchestration import kfp_io, kfp_reports, kfp_tracking

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class FakeArtifact:
    """The parts of a KFP artifact the helpers use."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.metadata: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.confusion: tuple[list[str], list[list[int]]] | None = None

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name] = value

    def log_confusion_matrix(self, classes: list[str], matrix: list[list[int]]) -> None:
        self.confusion = (classes, matrix)


EVAL = parse_evaluation(
    {"format": 2, "model": {"content_hash": "h", "dir": "/m"}, "corpora": ["ravdess"],
     "test": {"n": 4, "uar": 0.5, "uar_ci_low": 0.3, "uar_ci_high": 0.7, "wa": 0.6, "macro_f1": 0.55,
              "classes": ["a", "b"], "confusion": [[1, 1], [0, 2]], "per_class_recall": {"a": 0.5, "b": 1.0},
              "test_manifest_hash": "t", "per_speaker": {"s1": {"n": 4, "uar": 0.5, "wa": 0.5, "macro_f1": 0.5}}},
     "cross_corpus": {"emodb": {"n": 2, "uar": 0.4, "wa": 0.5, "macro_f1": 0.3, "test_manifest_hash": "e",
                                "per_class_recall": {"a": 0.4, "b": None}}},
     "cross_corpus_mean_uar": 0.4}, "metrics.json")


def test_metrics_are_logged_and_written(tmp_path: Path) -> None:
    art = FakeArtifact(tmp_path / "metrics")
    values = kfp_reports.log_metrics(art, kfp_reports.evaluation_metrics(EVAL))
    assert art.metrics == values
    assert values["uar"] == 0.5 and values["uar_ci_low"] == 0.3 and values["wa"] == 0.6
    assert values["per_class_recall.b"] == 1.0 and values["cross_corpus.emodb.uar"] == 0.4
    assert not any("per_speaker" in k or "confusion" in k for k in values)  # kept for the report
    assert json.loads(Path(art.path).read_text()) == values  # the file kfp.local's cache checks


def test_confusion_from_the_evaluation(tmp_path: Path) -> None:
    assert kfp_reports.confusion_of(EVAL) == (["a", "b"], [[1, 1], [0, 2]])
    bad = EVAL.model_copy(update={"test": EVAL.test.model_copy(update={"confusion": [[1, 2, 3], [4, 5, 6]]})})
    with pytest.raises(ValueError, match=r"'test\.confusion' is not a 2x2 matrix"):
        kfp_reports.confusion_of(bad)
    art = FakeArtifact(tmp_path / "cm")
    kfp_reports.log_confusion(art, *kfp_reports.confusion_of(EVAL))
    assert art.confusion == (["a", "b"], [[1, 1], [0, 2]])


def test_html_report_inlines_the_plots(tmp_path: Path) -> None:
    (tmp_path / "confusion.png").write_bytes(PNG)
    (tmp_path / "extra.png").write_bytes(PNG)
    html = kfp_reports.markdown_to_html("Eval", "# Eval\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![cm](confusion.png)\n",
                                   tmp_path, kfp_reports.pngs(tmp_path))
    assert "<table>" in html and "<h1>Eval</h1>" in html
    assert 'src="confusion.png"' not in html
    assert html.count("data:image/png;base64,") == 2  # linked one inlined once, the other appended
    assert "extra.png" in html


def test_local_html_artifacts_get_an_html_name(tmp_path: Path) -> None:
    from kfp.dsl import HTML

    local = HTML(uri=str(tmp_path / "report"))
    kfp_reports.write_html(local, "Eval", "# Eval\n")
    assert local.uri.endswith("report.html") and Path(local.path).read_text().startswith("<!doctype html>")


def test_switched_off_branch_placeholder(tmp_path: Path) -> None:
    art = FakeArtifact(tmp_path / "synthetic")
    assert kfp_io.optional_input(art) is None  # nothing there yet
    kfp_io.mark_skipped(art, "augment.enabled is false")
    assert art.metadata["skipped"] is True
    assert kfp_io.optional_input(art) is None
    real = FakeArtifact(tmp_path / "encoder")
    (tmp_path / "encoder" / "encoder").mkdir(parents=True)
    assert kfp_io.optional_input(real, "encoder") == tmp_path / "encoder" / "encoder"


def test_model_dir_follows_the_metadata(tmp_path: Path) -> None:
    art = FakeArtifact(tmp_path)
    assert kfp_io.model_dir(art) == tmp_path / "model"
    art.metadata["model_dir"] = "elsewhere"
    assert kfp_io.model_dir(art) == tmp_path / "elsewhere"


def test_tracking_uri_from_the_mlflow_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.dumps({"tracking": {"uri": "sqlite:///local.db", "experiment": "x",
                                      "artifact_location": "a"}})
    monkeypatch.delenv(kfp_tracking.TRACKING_ENV, raising=False)
    assert kfp_io.stage_params(config, "train").tracking.uri == "sqlite:///local.db"
    monkeypatch.setenv(kfp_tracking.TRACKING_ENV, "http://mlflow:5000")
    assert kfp_io.stage_params(config, "train").tracking.uri == "http://mlflow:5000"
    assert kfp_tracking.tracking_uri("sqlite:///local.db") == "http://mlflow:5000"


def test_stage_params_names_the_stage_on_bad_config() -> None:
    with pytest.raises(ValueError, match="train"):
        kfp_io.stage_params("{not json", "train")


def test_record_status_writes_an_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    status = SimpleNamespace(state="FAILED", pipeline_job_resource_name="run-7", pipeline_task_name="exit",
                             error_code="", error_message="Task ingest failed.")
    assert kfp_tracking.record_status(status, uri, "affectflow") == "FAILED"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("affectflow" + kfp_tracking.STATUS_EXPERIMENT_SUFFIX)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "run-7"
    assert run.data.tags["pipeline.error_message"] == "Task ingest failed."


def test_record_status_never_raises(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = SimpleNamespace(state="SUCCEEDED", pipeline_job_resource_name="r", pipeline_task_name="",
                             error_code="", error_message="")
    bad = tmp_path / "file"
    bad.write_text("")
    assert kfp_tracking.record_status(status, f"sqlite:///{bad}/sub/mlflow.db", "x") == "SUCCEEDED"
    assert "could not record" in capsys.readouterr().out


# ----------------------------------------------------------------------------- cluster: a tracking server or nothing
def _in_kubeflow_pod(monkeypatch: pytest.MonkeyPatch, uri: str | None) -> None:
    """What a Kubeflow task of a pipeline compiled with pipeline.require_tracking_server sees."""
    monkeypatch.setenv(kfp_tracking.KFP_POD_ENV, "affectflow-train-abcde-123")
    monkeypatch.setenv(kfp_tracking.TRACKING_SECRET_ENV, "affectflow-mlflow")
    if uri is None:
        monkeypatch.delenv(kfp_tracking.TRACKING_ENV, raising=False)
    else:
        monkeypatch.setenv(kfp_tracking.TRACKING_ENV, uri)


CONFIG = json.dumps({"tracking": {"uri": "sqlite:///artifacts/mlflow.db"}})


@pytest.mark.parametrize("uri", [None, "", "  ", "sqlite:///artifacts/mlflow.db", "./mlruns"])
def test_a_kubeflow_task_refuses_the_sqlite_fallback_and_names_the_secret_key(
        monkeypatch: pytest.MonkeyPatch, uri: str | None) -> None:
    _in_kubeflow_pod(monkeypatch, uri)
    with pytest.raises(kfp_tracking.TrackingServerError, match=r"Secret 'affectflow-mlflow' key 'MLFLOW_TRACKING_URI'"):
        kfp_io.stage_params(CONFIG, "train")
    with pytest.raises(kfp_tracking.TrackingServerError, match=r"Secret 'affectflow-mlflow' key 'MLFLOW_TRACKING_URI'"):
        kfp_tracking.preflight()


def test_the_same_task_outside_a_pod_or_not_required_keeps_the_configured_uri(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _in_kubeflow_pod(monkeypatch, None)
    monkeypatch.delenv(kfp_tracking.KFP_POD_ENV)  # kfp.local: the baked variable is there, the pod name is not
    assert kfp_io.stage_params(CONFIG, "train").tracking.uri == "sqlite:///artifacts/mlflow.db"
    kfp_tracking.preflight()
    _in_kubeflow_pod(monkeypatch, None)
    monkeypatch.delenv(kfp_tracking.TRACKING_SECRET_ENV)  # compiled with require_tracking_server: false
    assert kfp_io.stage_params(CONFIG, "train").tracking.uri == "sqlite:///artifacts/mlflow.db"
    _in_kubeflow_pod(monkeypatch, "http://mlflow.affectflow.svc.cluster.local:5000")
    assert kfp_io.stage_params(CONFIG, "train").tracking.uri == "http://mlflow.affectflow.svc.cluster.local:5000"


def test_preflight_probes_the_server_and_names_it_when_it_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first task (resolve-params) fails in seconds when the URI is set but nothing answers."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from affectflow.runtime.netutil import free_port

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _in_kubeflow_pod(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        kfp_tracking.preflight()  # answers: no error
    finally:
        server.shutdown()
        server.server_close()
    dead = f"http://127.0.0.1:{free_port()}"
    _in_kubeflow_pod(monkeypatch, dead)
    monkeypatch.setattr(kfp_tracking, "PROBE_ATTEMPTS", 2)
    monkeypatch.setattr(kfp_tracking, "PROBE_TIMEOUT_S", 0.5)
    with pytest.raises(kfp_tracking.TrackingServerError, match=rf"{dead} \(Secret 'affectflow-mlflow' key "
                                                         r"'MLFLOW_TRACKING_URI'\) does not answer"):
        kfp_tracking.preflight()


def test_the_first_task_fails_before_any_work_without_a_tracking_server(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from affectflow.config import load_params
    from affectflow.orchestration import run_form

    base = load_params(None)
    _in_kubeflow_pod(monkeypatch, None)
    with pytest.raises(kfp_tracking.TrackingServerError, match=r"key 'MLFLOW_TRACKING_URI' is missing or empty"):
        kfp_io.resolve_params(run_form.base_yaml(base), run_form.run_form_defaults(base), tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


def test_registry_markdown_shows_the_decision_and_both_scores() -> None:
    result = {"model_name": "m", "version": "3", "promoted": False, "champion": "2",
              "gate": {"passed": False, "reason": "not promoted (no improvement over champion v2): UAR ...",
                       "champion_version": "2", "test_manifest_hash": "abc123", "challenger_uar": 0.31,
                       "champion_uar": 0.77, "rescored": True},
              "note": None, "data_version": "stamp-1"}
    text = kfp_reports.registry_markdown("Registration", result)
    assert "**Not promoted**: not promoted (no improvement over champion v2)" in text
    assert "| `abc123` | 0.3100 | 0.7700 | yes |" in text
    assert "stamp-1" in text and "note" not in text
