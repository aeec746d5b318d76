"""The monitor pipeline (`pipelines/monitor_pipeline.py`): committed IR current, the monitor task
and the retraining trigger behind its two conditions; the trigger starts the uploaded training
pipeline's latest version."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from affectflow.config import load_params
from affectflow.orchestration.ir import PipelineError, documents, stale
from affectflow.orchestration.retrain_trigger import trigger_retraining
from pipelines.monitor_pipeline import MONITOR_PIPELINE_NAME, build_monitor_pipeline

REPO = Path(__file__).resolve().parents[2]
COMPILED = REPO / "pipelines" / "compiled" / f"{MONITOR_PIPELINE_NAME}.yaml"


def test_committed_monitor_ir_matches_a_fresh_compile() -> None:
    assert not stale(build_monitor_pipeline(load_params(REPO / "params.yaml")), COMPILED), \
        f"{COMPILED} is stale: run `affectflow pipeline compile` and commit it"


def test_the_retraining_task_runs_only_on_retrain_and_when_switched_on() -> None:
    spec = documents(COMPILED)[0]
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"monitor", "condition-1"}
    assert "retrain" in root["condition-1"]["triggerPolicy"]["condition"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    (nested,) = inner.values()
    trigger = spec["components"][nested["componentRef"]["name"]]["dag"]["tasks"]
    assert "start-retraining" in trigger and "trigger_retraining" in nested["triggerPolicy"]["condition"]
    assert spec["root"]["inputDefinitions"]["parameters"]["trigger_retraining"]["defaultValue"] is False


class FakeClient:
    def __init__(self, pipelines: dict[str, str]):
        self.pipelines, self.runs = pipelines, []

    def get_pipeline_id(self, name: str) -> str | None:
        return self.pipelines.get(name)

    def list_pipeline_versions(self, pipeline_id: str, sort_by: str, page_size: int) -> SimpleNamespace:
        assert sort_by == "created_at desc"
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(pipeline_version_id=f"{pipeline_id}-v9")])

    def create_experiment(self, name: str, namespace: str | None) -> SimpleNamespace:
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def run_pipeline(self, **kw: str) -> SimpleNamespace:
        self.runs.append(kw)
        return SimpleNamespace(run_id="run-1")


def test_the_trigger_starts_the_latest_uploaded_training_pipeline() -> None:
    client = FakeClient({"affectflow-train": "p1"})
    got = trigger_retraining(client, experiment="affectflow")
    assert got["run_id"] == "run-1" and client.runs[0]["version_id"] == "p1-v9"
    assert client.runs[0]["experiment_id"] == "exp-affectflow" and client.runs[0]["pipeline_id"] == "p1"
    with pytest.raises(PipelineError, match="no pipeline named 'affectflow-train' is uploaded"):
        trigger_retraining(FakeClient({}), experiment="affectflow")
