"""affectflow.orchestration.kfp_io: what the components do around a stage call, without KFP running them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from affectflow.orchestration import kfp_io

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


EVAL = {"uar": 0.5, "wa": 0.6, "macro_f1": 0.55, "model_dir": "/m", "corpora": ["ravdess"],
        "test": {"n": 4, "uar": 0.5, "uar_ci_low": 0.3, "uar_ci_high": 0.7, "classes": ["a", "b"],
                 "confusion": [[1, 1], [0, 2]], "per_class_recall": {"a": 0.5, "b": 1.0},
                 "per_speaker": {"s1": {"n": 4, "uar": 0.5}}}}


def test_metrics_are_logged_and_written(tmp_path: Path) -> None:
    art = FakeArtifact(tmp_path / "metrics")
    values = kfp_io.log_metrics(art, kfp_io.headline_metrics(EVAL))
    assert art.metrics == values
    assert values["uar"] == 0.5 and values["test.uar_ci_low"] == 0.3
    assert values["test.per_class_recall.b"] == 1.0
    assert not any("per_speaker" in k or "confusion" in k for k in values)  # kept for the report
    assert json.loads(Path(art.path).read_text()) == values  # the file kfp.local's cache checks


def test_confusion_from_evaluate_result(tmp_path: Path) -> None:
    assert kfp_io.confusion_of(EVAL) == (["a", "b"], [[1, 1], [0, 2]])
    alt = {"confusion": {"classes": ["x", "y"], "matrix": [[3, 0], [1, 2]]}}
    assert kfp_io.confusion_of(alt) == (["x", "y"], [[3, 0], [1, 2]])
    with pytest.raises(ValueError, match="2x2"):
        kfp_io.confusion_of({"classes": ["a", "b"], "confusion": [[1, 2, 3], [4, 5, 6]]})
    with pytest.raises(ValueError, match="no confusion matrix"):
        kfp_io.confusion_of({"uar": 0.5})
    art = FakeArtifact(tmp_path / "cm")
    kfp_io.log_confusion(art, *kfp_io.confusion_of(EVAL))
    assert art.confusion == (["a", "b"], [[1, 1], [0, 2]])


def test_point_estimates() -> None:
    assert kfp_io.point(0.5) == 0.5
    assert kfp_io.point({"mean": 0.4, "ci": [0.3, 0.5]}) == 0.4
    with pytest.raises(ValueError, match="no value"):
        kfp_io.point({"ci": [0.3, 0.5]})


def test_html_report_inlines_the_plots(tmp_path: Path) -> None:
    (tmp_path / "confusion.png").write_bytes(PNG)
    (tmp_path / "extra.png").write_bytes(PNG)
    html = kfp_io.markdown_to_html("Eval", "# Eval\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![cm](confusion.png)\n",
                                   tmp_path, kfp_io.pngs(tmp_path))
    assert "<table>" in html and "<h1>Eval</h1>" in html
    assert 'src="confusion.png"' not in html
    assert html.count("data:image/png;base64,") == 2  # linked one inlined once, the other appended
    assert "extra.png" in html


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
    monkeypatch.delenv(kfp_io.TRACKING_ENV, raising=False)
    assert kfp_io.stage_params(config, "train").tracking.uri == "sqlite:///local.db"
    monkeypatch.setenv(kfp_io.TRACKING_ENV, "http://mlflow:5000")
    assert kfp_io.stage_params(config, "train").tracking.uri == "http://mlflow:5000"
    assert kfp_io.tracking_uri("sqlite:///local.db") == "http://mlflow:5000"


def test_stage_params_names_the_stage_on_bad_config() -> None:
    with pytest.raises(ValueError, match="train"):
        kfp_io.stage_params("{not json", "train")


def test_record_status_writes_an_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    status = SimpleNamespace(state="FAILED", pipeline_job_resource_name="run-7", pipeline_task_name="exit",
                             error_code="", error_message="Task ingest failed.")
    assert kfp_io.record_status(status, uri, "affectflow") == "FAILED"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("affectflow" + kfp_io.STATUS_EXPERIMENT_SUFFIX)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "run-7"
    assert run.data.tags["pipeline.error_message"] == "Task ingest failed."


def test_record_status_never_raises(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = SimpleNamespace(state="SUCCEEDED", pipeline_job_resource_name="r", pipeline_task_name="",
                             error_code="", error_message="")
    bad = tmp_path / "file"
    bad.write_text("")
    assert kfp_io.record_status(status, f"sqlite:///{bad}/sub/mlflow.db", "x") == "SUCCEEDED"
    assert "could not record" in capsys.readouterr().out


def test_registry_markdown_shows_the_decision_and_both_scores() -> None:
    result = {"model_name": "m", "version": "3", "promoted": False, "champion": "2",
              "gate": {"passed": False, "reason": "not promoted (no improvement over champion v2): UAR ...",
                       "champion_version": "2", "test_manifest_hash": "abc123", "challenger_uar": 0.31,
                       "champion_uar": 0.77, "rescored": True},
              "note": None, "data_version": "stamp-1"}
    text = kfp_io.registry_markdown("Registration", result)
    assert "**Not promoted**: not promoted (no improvement over champion v2)" in text
    assert "| `abc123` | 0.3100 | 0.7700 | yes |" in text
    assert "stamp-1" in text and "note" not in text
