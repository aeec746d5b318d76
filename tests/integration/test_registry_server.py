"""The registry scenario over HTTP, against a real `mlflow server` process (sqlite backend).

A session fixture starts one server on 127.0.0.1 with a free port (registry_servers.mlflow_server:
job execution off, one worker, artifacts proxied to a temporary folder), waits for /health and
kills its process group at teardown. No shared data is needed, so the tests are not marked
`integration`. The same scenario on Postgres, with 100+ events: test_registry_postgres.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from base_settings import base_params
from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use_tracking_uri
from register_support import evaluation_json, model_json, register
from registry_servers import mlflow_server as start_mlflow_server

from affectflow.config import Params
from affectflow.contracts.model_folder import content_hash
from affectflow.tracking.registry import CHALLENGER, CHAMPION, Registry

CLASSES = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running `mlflow server` backed by sqlite in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with start_mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}") as url:
        yield url


@pytest.fixture(scope="session")
def logged_model(mlflow_server: str) -> dict[str, str]:
    """A run on the server that logged a trivial pyfunc model (artifacts go through the server)."""
    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    with use_tracking_uri(mlflow_server):
        exp = mlflow.MlflowClient().create_experiment("registry-server-tests")
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.set_tag("git_commit", "feedbeef")
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return {"run_id": run.info.run_id, "model_uri": info.model_uri}


@pytest.fixture
def params(mlflow_server: str, tmp_path: Path) -> Params:
    return base_params({
        "paths.workdir": str(tmp_path / "work"),
        "tracking.uri": mlflow_server,
        "registry.model_name": "affectflow-http",
        "registry.min_uar_gain": 0.01,
        "registry.min_class_recall": 0.1,
    })


def _candidate(tmp_path: Path, logged: dict[str, str], tag: str, uar: float, *,
               floor_class_recall: float | None = None, test_hash: str = "test-A") -> tuple[Path, Path]:
    model_dir = tmp_path / tag / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.json").write_text(json.dumps(model_json({"run_id": logged["run_id"]}, CLASSES, tag=tag)))
    recall = dict.fromkeys(CLASSES, uar)
    if floor_class_recall is not None:
        recall["sad"] = floor_class_recall
    metrics = tmp_path / tag / "metrics.json"
    metrics.write_text(json.dumps(evaluation_json(content_hash(model_dir), logged["run_id"], uar, recall, test_hash)))
    return model_dir, metrics


def test_promotion_and_rollback_over_http(params: Params, logged_model: dict, tmp_path: Path,
                                          mlflow_server: str) -> None:
    import mlflow.pyfunc

    def reg(tag: str, uar: float, **kw) -> dict:
        model_dir, metrics = _candidate(tmp_path, logged_model, tag, uar, **kw)
        return register(params, model_dir, metrics, tmp_path / tag / "out")

    first = reg("v1", 0.40)
    assert first["promoted"] and first["champion"] == "1" and first["source"] == logged_model["model_uri"]
    assert first["tracking_uri"] == mlflow_server
    assert not reg("v2", 0.405)["promoted"]                       # below champion + margin
    mismatch = reg("v3", 0.90, test_hash="test-B")
    assert not mismatch["promoted"] and "test manifests differ" in mismatch["gate"]["reason"]
    better = reg("v4", 0.50)
    assert better["promoted"] and better["previous_champion"] == "1"
    floor = reg("v5", 0.80, floor_class_recall=0.05)
    assert not floor["promoted"] and "sad=0.050" in floor["gate"]["reason"]

    registry = Registry(params)
    assert registry.aliases() == {CHAMPION: "4", CHALLENGER: "5"}
    assert [v.version for v in registry.versions()] == ["5", "4", "3", "2", "1"]
    tags = registry.version_tags("4")
    assert tags["git_commit"] == "feedbeef" and tags["gate"] == "passed" and "promoted_at" in tags

    back = registry.rollback(reason="latency regression")
    assert (back["champion"], back["previous_champion"]) == ("1", "4")
    assert registry.alias_version(CHAMPION) == "1"
    assert registry.version_tags("4")["rollback_reason"] == "latency regression"
    history = registry.history()
    assert [(e["action"], e["version"]) for e in history] == [("promote", "1"), ("promote", "4"), ("rollback", "1")]

    # The alias resolves to a model whose artifacts the server proxies.
    with use_tracking_uri(mlflow_server):
        model = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}@{CHAMPION}")
    assert list(model.predict(["ok"])) == ["ok"]


def test_cli_against_server(params: Params, mlflow_server: str, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from affectflow.cli import main

    monkeypatch.chdir(tmp_path)
    sets = ["--defaults", "--set", f"tracking.uri={mlflow_server}", "--set", "registry.model_name=affectflow-http-cli"]
    assert main(["registry", "list", *sets, "--out", "empty.json"]) == 0
    assert json.loads((tmp_path / "empty.json").read_text())["versions"] == []
    assert main(["registry", "rollback", *sets]) == 1  # no champion yet: a clear error, not a crash
