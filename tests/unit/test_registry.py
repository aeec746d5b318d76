"""Registry and promotion gate against an in-process MLflow store (sqlite in a temporary folder).

One store and one logged dummy pyfunc model per module keep this fast (creating an MLflow sqlite
schema takes seconds); every test registers under its own model name, so tests stay independent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use_tracking_uri

from affectflow.config import Params, load_params
from affectflow.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    STACK_TAG,
    Registry,
    RegistryError,
    Scores,
    evaluate_gate,
    read_scores,
    register,
)
from affectflow.tracking.uri import ensure_store, resolve_uri

CLASSES = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A sqlite tracking store with one run that logged a trivial pyfunc model."""
    import mlflow
    import mlflow.pyfunc

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    exp = client.create_experiment("registry-tests", artifact_location=str(root / "artifacts"))

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    with use_tracking_uri(uri), mlflow.start_run(experiment_id=exp) as run:
        # Lineage tags as affectflow.tracking.runs writes them ("" = git not available in the run).
        mlflow.set_tags({"dvc_revision": "dvc.lock:abc", "params_hash": "p123", "git_commit": ""})
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return {"uri": uri, "run_id": run.info.run_id, "model_uri": info.model_uri}


@pytest.fixture
def params(store: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path) -> Params:
    name = "m-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60]
    return load_params(None, {
        "paths.workdir": str(tmp_path / "work"),
        "tracking.uri": store["uri"],
        "registry.model_name": name,
        "registry.min_uar_gain": 0.01,
        "registry.min_class_recall": 0.1,
    })


def write_candidate(tmp_path: Path, store: dict[str, str], tag: str, uar: float, *,
                    recall: float | dict[str, float] | None = None, test_hash: str = "test-A",
                    model_json: dict | None = None) -> tuple[Path, Path]:
    """A model folder (model.json pointing at the logged run) and its metrics.json."""
    folder = tmp_path / tag
    model_dir = folder / "model"
    model_dir.mkdir(parents=True)
    # The shape affectflow.stages.train.stage writes: run info under "mlflow", hashes under "lineage".
    info = {"mlflow": {"run_id": store["run_id"], "tracking_uri": store["uri"]},
            "lineage": {"manifest_hash": "manifest-1", "git_commit": "c0ffee"}}
    (model_dir / "model.json").write_text(json.dumps(info if model_json is None else model_json))
    per_class = recall if isinstance(recall, dict) else {c: uar if recall is None else recall for c in CLASSES}
    metrics = {"uar": uar, "wa": uar + 0.01, "macro_f1": uar - 0.01, "per_class_recall": per_class,
               "test_manifest_hash": test_hash}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return model_dir, folder / "metrics.json"


def do_register(params: Params, tmp_path: Path, store: dict[str, str], tag: str, uar: float, **kw) -> dict:
    model_dir, metrics = write_candidate(tmp_path, store, tag, uar, **kw)
    return register(params, model_dir, metrics, tmp_path / tag / "register")


# ----------------------------------------------------------------------------- pure rules
def test_gate_rules() -> None:
    base = {c: 0.5 for c in CLASSES}
    champ = Scores(uar=0.50, per_class_recall=base, test_manifest_hash="h")
    kw = {"min_uar_gain": 0.01, "min_class_recall": 0.2, "champion_version": "1"}

    assert evaluate_gate(Scores(0.3, per_class_recall=base, test_manifest_hash="h"), None, **kw).passed
    assert evaluate_gate(Scores(0.51, per_class_recall=base, test_manifest_hash="h"), champ, **kw).passed
    low = evaluate_gate(Scores(0.505, per_class_recall=base, test_manifest_hash="h"), champ, **kw)
    assert not low.passed and "0.5100" in low.reason
    floor = evaluate_gate(Scores(0.9, per_class_recall={**base, "sad": 0.1}, test_manifest_hash="h"),
                          champ, **kw)
    assert not floor.passed and "sad=0.100" in floor.reason
    other = evaluate_gate(Scores(0.9, per_class_recall=base, test_manifest_hash="h2"), champ, **kw)
    assert not other.passed and "test manifests differ" in other.reason
    unknown = evaluate_gate(Scores(0.9, per_class_recall=base), None, **kw)
    assert not unknown.passed and "test_manifest_hash" in unknown.reason


def test_read_scores_point_estimates_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"uar": {"value": 0.6, "ci": [0.5, 0.7]}, "wa": 0.65,
                                "per_class_recall": {"sad": {"mean": 0.4}}, "test_manifest_hash": "t"}))
    s = read_scores(path)
    assert (s.uar, s.wa, s.macro_f1, s.per_class_recall, s.test_manifest_hash) == (0.6, 0.65, None, {"sad": 0.4}, "t")
    # The layout affectflow.stages.evaluate writes: details under "test"; null recall = class absent.
    path.write_text(json.dumps({"uar": 0.5, "test": {"per_class_recall": {"sad": 0.5, "calm": None},
                                                     "test_manifest_hash": "t2"}}))
    s = read_scores(path)
    assert (s.per_class_recall, s.test_manifest_hash) == ({"sad": 0.5}, "t2")
    path.write_text(json.dumps({"wa": 0.5}))
    with pytest.raises(ValueError, match=r"metrics\.json: field 'uar' missing"):
        read_scores(path)
    path.write_text(json.dumps({"uar": "high"}))
    with pytest.raises(ValueError, match="field 'uar' is not a finite number"):
        read_scores(path)


def test_resolve_uri_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///artifacts/mlflow.db") == f"sqlite:///{tmp_path / 'artifacts' / 'mlflow.db'}"
    assert not (tmp_path / "artifacts").exists()
    ensure_store("sqlite:///artifacts/mlflow.db")
    assert (tmp_path / "artifacts").is_dir()
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


# ----------------------------------------------------------------------------- registry scenarios
def test_first_version_becomes_champion_with_tags(params: Params, tmp_path: Path, store: dict) -> None:
    import mlflow.pyfunc

    res = do_register(params, tmp_path, store, "a", 0.40)
    assert res["version"] == "1" and res["promoted"] and res["gate"]["passed"]
    assert sorted(res["aliases"]) == [CHALLENGER, CHAMPION]
    assert res["source"] == store["model_uri"] and res["run_id"] == store["run_id"]
    assert json.loads((tmp_path / "a" / "register" / "result.json").read_text())["version"] == "1"

    reg = Registry(params)
    tags = reg.version_tags("1")
    assert tags["uar"] == "0.400000" and tags["test_manifest_hash"] == "test-A"
    assert json.loads(tags["per_class_recall"]) == dict.fromkeys(CLASSES, 0.4)
    assert (tags["manifest_hash"], tags["dvc_revision"], tags["git_commit"], tags["params_hash"]) == (
        "manifest-1", "dvc.lock:abc", "c0ffee", "p123")
    assert tags["gate"] == "passed" and "no champion yet" in tags["gate_reason"]
    assert tags["promoted_at"].endswith("+00:00") and "gate passed" in tags["promotion_reason"]
    history = json.loads(reg.model_tags()[HISTORY_TAG])
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [("promote", "1", None)]
    # The champion alias resolves to a loadable model.
    with use_tracking_uri(store["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}@{CHAMPION}")
    assert list(model.predict(["x"])) == ["x"]


def test_promotion_and_rollback_scenario(params: Params, tmp_path: Path, store: dict) -> None:
    do_register(params, tmp_path, store, "first", 0.40)
    worse = do_register(params, tmp_path, store, "worse", 0.405)  # below champion + 0.01
    assert not worse["promoted"] and worse["champion"] == "1" and worse["aliases"] == [CHALLENGER]
    assert "< champion v1" in worse["gate"]["reason"]
    better = do_register(params, tmp_path, store, "better", 0.45)
    assert better["promoted"] and better["champion"] == "3" and better["previous_champion"] == "1"

    reg = Registry(params)
    assert reg.aliases() == {CHAMPION: "3", CHALLENGER: "3"}
    assert reg.version_tags("2")["gate"] == "failed"
    assert reg.stack() == ["1", "3"]

    back = reg.rollback(reason="bad canary")
    assert (back["champion"], back["previous_champion"]) == ("1", "3")
    assert reg.alias_version(CHAMPION) == "1"
    assert reg.version_tags("3")["rollback_reason"] == "bad canary"
    assert reg.version_tags("1")["restore_reason"] == "bad canary"
    last = json.loads(reg.model_tags()["last_rollback"])
    assert last["action"] == "rollback" and last["version"] == "1" and last["previous"] == "3"
    assert [e["action"] for e in reg.history()] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert json.loads(reg.model_tags()[STACK_TAG]) == ["1"]


def test_mismatched_test_manifest_refuses(params: Params, tmp_path: Path, store: dict) -> None:
    do_register(params, tmp_path, store, "a", 0.40, test_hash="test-A")
    other = do_register(params, tmp_path, store, "b", 0.90, test_hash="test-B")
    assert not other["promoted"] and other["champion"] == "1"
    assert "test manifests differ" in other["gate"]["reason"] and "test-B" in other["gate"]["reason"]


def test_class_recall_floor_blocks(params: Params, tmp_path: Path, store: dict) -> None:
    first = do_register(params, tmp_path, store, "a", 0.60, recall={**dict.fromkeys(CLASSES, 0.7), "sad": 0.05})
    assert not first["promoted"] and first["champion"] is None
    assert "sad=0.050" in first["gate"]["reason"]
    ok = do_register(params, tmp_path, store, "b", 0.40)
    assert ok["promoted"] and ok["champion"] == "2"
    blocked = do_register(params, tmp_path, store, "c", 0.80, recall={**dict.fromkeys(CLASSES, 0.9), "angry": 0.0})
    assert not blocked["promoted"] and blocked["champion"] == "2"


def test_manual_promote_through_gate_and_force(params: Params, tmp_path: Path, store: dict) -> None:
    params.registry.auto_promote = False
    params.registry.history_limit = 1  # the audit list is trimmed; the rollback stack is not
    first = do_register(params, tmp_path, store, "a", 0.50)
    assert not first["promoted"] and first["gate"]["passed"] and first["champion"] is None
    reg = Registry(params)
    assert reg.promote("1", reason="first release")["promoted"]
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote("1")
    do_register(params, tmp_path, store, "b", 0.45)
    refused = reg.promote("2")
    assert not refused["promoted"] and reg.alias_version(CHAMPION) == "1"
    forced = reg.promote("2", force=True, reason="hotfix for a label bug")
    assert forced["promoted"] and forced["forced"] and reg.alias_version(CHAMPION) == "2"
    tags = reg.version_tags("2")
    assert tags["promotion_forced"] == "true" and "hotfix for a label bug" in tags["promotion_reason"]
    assert "gate said" in tags["promotion_reason"]
    assert [(e["version"], e["forced"]) for e in reg.history()] == [("2", True)]
    assert reg.stack() == ["1", "2"]
    with pytest.raises(RegistryError, match="version 99 not found"):
        reg.promote("99")


def test_model_source_from_model_uri_and_missing_fields(params: Params, tmp_path: Path, store: dict) -> None:
    res = do_register(params, tmp_path, store, "a", 0.4, model_json={"mlflow_model_uri": store["model_uri"]})
    assert res["run_id"] == store["run_id"] and res["source"] == store["model_uri"]
    res = do_register(params, tmp_path, store, "b", 0.4, model_json={"mlflow": {"model_uri": f"runs:/{store['run_id']}/model"}})
    assert res["source"] == store["model_uri"]
    model_dir, metrics = write_candidate(tmp_path, store, "c", 0.4, model_json={"arch": "cnn_bigru"})
    with pytest.raises(ValueError, match=r"model\.json: fields 'mlflow_model_uri' and 'mlflow_run_id' missing"):
        register(params, model_dir, metrics, tmp_path / "c" / "register")
    assert register(params, model_dir, metrics, tmp_path / "c" / "register", run_id=store["run_id"])["version"] == "3"


def test_cli_registry_actions(params: Params, tmp_path: Path, store: dict,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from affectflow.cli import main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults plus --set
    sets = ["--set", f"tracking.uri={store['uri']}", "--set", f"registry.model_name={params.registry.model_name}",
            "--set", "registry.min_uar_gain=0.01"]
    for tag, uar in (("a", 0.40), ("b", 0.30)):
        model_dir, metrics = write_candidate(tmp_path, store, tag, uar)
        assert main(["register", *sets, "--model", str(model_dir), "--metrics", str(metrics),
                     "--out", str(tmp_path / tag / "out")]) == 0
    assert json.loads((tmp_path / "b" / "out" / "result.json").read_text())["promoted"] is False

    assert main(["registry", "list", *sets, "--out", "list.json"]) == 0
    listed = json.loads((tmp_path / "list.json").read_text())["versions"]
    assert [(r["version"], r["aliases"], r["uar"]) for r in listed] == [
        ("2", [CHALLENGER], "0.300000"), ("1", [CHAMPION], "0.400000")]
    assert "model versions" in capsys.readouterr().out

    assert main(["registry", "describe", *sets, "--alias", CHAMPION, "--out", "d.json"]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["version"] == "1"
    assert main(["registry", "promote", *sets, "--version", "2"]) == 1  # gate refuses
    assert main(["registry", "promote", *sets, "--version", "2", "--force", "--reason", "test"]) == 0
    assert main(["registry", "rollback", *sets, "--reason", "regression"]) == 0
    assert Registry(params).alias_version(CHAMPION) == "1"
    assert main(["registry", "rollback", *sets]) == 1
    assert "nothing to roll back" in capsys.readouterr().err
