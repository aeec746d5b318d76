"""MLflow run contents of a training run (+ its evaluation), and the lineage helpers."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from recognizer_support import trained

from affectflow.contracts.manifest import manifest_hash, read_manifest
from affectflow.tracking import runs as tracking
from affectflow.tracking.revisions import locked_md5
from affectflow.tracking.uri import (
    ensure_store,
    experiment_artifact_location,
    mlflow_scope,
    resolve_artifact_location,
    resolve_uri,
)


def _artifacts(client: MlflowClient, run_id: str, path: str) -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, path)}


def test_training_run_has_params_epochs_lineage_plots_and_models(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    run_id = t["result"].summary["mlflow_run_id"]
    uri = resolve_uri(t["params"].tracking.uri)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    p = run.data.params
    assert p["train.epochs"] == str(t["params"].train.epochs)
    assert p["train.cnn.channels"] == "[8, 16, 16]"
    assert p["ingest.classes"] == '["neutral", "happy", "sad", "angry"]'
    tags = run.data.tags
    assert tags["manifest_hash"] == manifest_hash(read_manifest(t["manifest"]))
    assert tags["feature_config_hash"] == t["params"].section_hash("features", "audio")
    assert tags["stage"] == "train" and "git_commit" in tags and "params_hash" in tags
    # one point per epoch for the per-epoch metrics
    history = client.get_metric_history(run_id, "val_uar")
    assert sorted(m.step for m in history) == list(range(t["params"].train.epochs))
    assert run.data.metrics["best_val_uar"] == pytest.approx(t["result"].summary["val_uar"])
    assert max(m.value for m in history) == pytest.approx(t["result"].summary["val_uar"])
    # evaluation was logged into the same run
    assert run.data.metrics["test_uar"] == pytest.approx(t["metrics"]["test"]["uar"])
    assert "test_uar_ci_low" in run.data.metrics
    assert "curves.png" in _artifacts(client, run_id, "plots")
    assert {"model.json", "model.pt"} <= _artifacts(client, run_id, "model_folder")
    assert {"metrics.json", "report.md", "confusion.png"} <= _artifacts(client, run_id, "evaluation")
    # MLflow resolves a run's logged model through the process-wide store, whatever the client's
    with mlflow_scope(uri):
        assert "MLmodel" in _artifacts(client, run_id, "model")
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert [c.name for c in info.signature.outputs.inputs] == [*t["result"].summary["classes"], "arousal", "valence",
                                                                 "label", "status"]
    assert {p.name for p in info.signature.params} == {"timeline", "window_s", "hop_s", "smooth"}


def test_resolve_uri_makes_local_stores_absolute_and_creates_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///sub/mlflow.db") == f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    assert not (tmp_path / "sub").exists()  # read-only callers leave no store behind
    assert ensure_store("sqlite:///sub/mlflow.db") == f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    assert (tmp_path / "sub").is_dir()  # writers get the folder
    assert resolve_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert resolve_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert resolve_uri("store.db") == f"sqlite:///{tmp_path / 'store.db'}"
    assert resolve_artifact_location("art") == (tmp_path / "art").as_uri()


def test_a_tracking_server_chooses_where_artifacts_go_unless_a_remote_location_is_given(tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch):
    """On a cluster tracking.uri becomes the MLflow server while tracking.artifact_location stays the
    relative default: an experiment created with it kept the models on the train pod's disk (the
    cluster rehearsal's predictor found no MLmodel). The server's own destination is used instead."""
    monkeypatch.chdir(tmp_path)
    assert experiment_artifact_location("http://mlflow:5000", "artifacts/mlartifacts") is None
    assert experiment_artifact_location("https://mlflow.example", "/abs/folder") is None
    assert experiment_artifact_location("http://mlflow:5000", "s3://b/mlartifacts") == "s3://b/mlartifacts"
    assert experiment_artifact_location("http://mlflow:5000", "") is None
    assert experiment_artifact_location("sqlite:///artifacts/mlflow.db", "art") == (tmp_path / "art").as_uri()

    import mlflow

    from affectflow.config import TrackingConfig
    from affectflow.tracking import runs

    created: dict[str, object] = {}
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: None)
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: None)
    monkeypatch.setattr(mlflow, "create_experiment", lambda name, artifact_location=None:
                        created.update(name=name, location=artifact_location) or "7")
    monkeypatch.setattr(mlflow, "set_experiment", lambda experiment_id=None: None)
    cfg = TrackingConfig(uri="http://127.0.0.1:5000", artifact_location="artifacts/mlartifacts", experiment="e")
    assert runs.configure(cfg) == "7" and created == {"name": "e", "location": None}


def test_dvc_revision_reads_locked_output_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert locked_md5({"features": "artifacts/features"}) == {}
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  features:\n    cmd: affectflow features\n"
        "    outs:\n    - path: artifacts/features\n      md5: abc123.dir\n")
    rev = locked_md5({"features": "artifacts/features", "manifest": "artifacts/ingest/m.parquet"})
    assert rev == {"dvc_features_md5": "abc123.dir"}


def test_flat_params_are_strings_within_mlflow_limits():
    from affectflow.config import load_params

    params = load_params(None, {"ingest.classes": [f"class{i:05d}" for i in range(1000)]})
    flat = tracking.flat_params(params)
    assert all(isinstance(v, str) and len(v) <= tracking.MAX_PARAM_CHARS for v in flat.values())
    assert flat["ingest.classes"].endswith("...") and flat["train.lr"] == str(params.train.lr)


def test_an_edited_copy_of_a_model_is_evaluated_in_a_run_of_its_own(synth_root: Path, tmp_path: Path,
                                                                      tmp_path_factory: pytest.TempPathFactory):
    """A copied folder keeps the training run's id in model.json; its scores must not overwrite
    that run's (the run logged another model: its `model_content_hash` tag says which)."""
    import shutil

    import torch

    from affectflow.cli import main
    from affectflow.contracts.model_folder import content_hash
    from affectflow.storage import read_json

    t = trained(synth_root, tmp_path_factory)
    run_id = t["result"].summary["mlflow_run_id"]
    client = MlflowClient(resolve_uri(t["params"].tracking.uri))
    assert client.get_run(run_id).data.tags[tracking.MODEL_HASH_TAG] == content_hash(t["result"].model_dir)
    before = client.get_run(run_id).data.metrics["test_uar"]
    copy = Path(shutil.copytree(t["result"].model_dir, tmp_path / "copy" / "model"))
    state = torch.load(copy / "model.pt", weights_only=True)
    torch.save({k: v * 0 if v.is_floating_point() else v for k, v in state.items()}, copy / "model.pt")
    io = ["--params", str(t["base"] / "params.yaml"), "--manifest", str(t["manifest"]), "--features", str(t["features"])]
    assert main(["evaluate", *io, "--model", str(copy), "--out", str(tmp_path / "eval")]) == 0
    scored = read_json(tmp_path / "eval" / "metrics.json")
    assert scored["model"]["content_hash"] == content_hash(copy) != content_hash(t["result"].model_dir)
    assert client.get_run(run_id).data.metrics["test_uar"] == before
    runs = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.stage = 'evaluate'")
    assert any(r.data.metrics.get("test_uar") == pytest.approx(scored["test"]["uar"]) for r in runs)
