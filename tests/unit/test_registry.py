"""Registry and promotion gate against an in-process MLflow store (sqlite in a temporary folder).

One store and one logged dummy pyfunc model per module keep this fast (creating an MLflow sqlite
schema takes seconds); every test registers under its own model name, so tests stay independent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from base_settings import base_params
from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use_tracking_uri
from register_support import register

from affectflow.config import Params
from affectflow.contracts.evaluation import EvaluationMismatch
from affectflow.contracts.model_folder import content_hash
from affectflow.tracking.gate import Scores, evaluate_gate
from affectflow.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    EVENT_PREFIX,
    LEGACY_HISTORY_TAG,
    LEGACY_STACK_TAG,
    MAX_EVENT_CHARS,
    STACK_TOP_TAG,
    Registry,
    RegistryError,
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

    folder = root / "logged-folder"
    folder.mkdir()
    with use_tracking_uri(uri), mlflow.start_run(experiment_id=exp) as run:
        # Lineage tags as affectflow.tracking.runs writes them ("" = git not available in the run).
        mlflow.set_tags({"dvc_revision": "dvc.lock:abc", "params_hash": "p123", "git_commit": ""})
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        # The model folder, as affectflow.tracking.runs.log_training logs it (the re-score fetches it).
        (folder / "model.json").write_text(json.dumps(meta_json({"run_id": run.info.run_id})))
        (folder / "model.pt").write_bytes(b"logged weights")
        mlflow.log_artifacts(str(folder), artifact_path="model_folder")
    return {"uri": uri, "run_id": run.info.run_id, "model_uri": info.model_uri,
            "folder": str(folder), "folder_hash": content_hash(folder)}


@pytest.fixture
def params(store: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path) -> Params:
    name = "m-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60]
    return base_params({
        "paths.workdir": str(tmp_path / "work"),
        "tracking.uri": store["uri"],
        "registry.model_name": name,
        "registry.min_uar_gain": 0.01,
        "registry.min_class_recall": 0.1,
    })


def meta_json(mlflow: dict | None, lineage: dict | None = None) -> dict:
    """model.json of a (weightless) model folder: the contract's required fields, its MLflow block."""
    meta = {"arch": "egemaps_mlp", "classes": list(CLASSES), "feature": "egemaps", "feature_config": {},
            "audio": {"sample_rate": 16000}, "normalization": {}, "arch_config": {}, "input_dim": 88,
            "lineage": lineage or {}}
    return meta if mlflow is None else {**meta, "mlflow": mlflow}


def evaluation(model_dir: Path, uar: float, test_hash: str, run_id: str | None,
               recall: float | dict[str, float] | None = None) -> dict:
    """metrics.json as evaluate writes it (`contracts.evaluation`), bound to `model_dir` (its `model` block)."""
    per_class = recall if isinstance(recall, dict) else {c: uar if recall is None else recall for c in CLASSES}
    return {"format": 2, "model": {"content_hash": content_hash(model_dir), "mlflow_run_id": run_id},
            "test": {"n": 40, "uar": uar, "wa": uar + 0.01, "macro_f1": uar - 0.01, "per_class_recall": per_class,
                     "test_manifest_hash": test_hash, "classes": list(CLASSES)}}


def write_candidate(tmp_path: Path, store: dict[str, str], tag: str, uar: float, *,
                    recall: float | dict[str, float] | None = None, test_hash: str = "test-A",
                    mlflow: dict | None = None) -> tuple[Path, Path]:
    """A model folder (model.json pointing at the logged run, or at `mlflow`; weights unique to
    `tag`) and its metrics.json."""
    folder = tmp_path / tag
    model_dir = folder / "model"
    model_dir.mkdir(parents=True)
    # The shape affectflow.stages.train.stage writes: run info under "mlflow", hashes under "lineage".
    logged = {"run_id": store["run_id"], "tracking_uri": store["uri"]} if mlflow is None else mlflow
    meta = meta_json(logged or None, {"manifest_hash": "manifest-1", "git_commit": "c0ffee"})
    (model_dir / "model.json").write_text(json.dumps(meta))
    (model_dir / "model.pt").write_bytes(f"weights of {tag}".encode())
    run_id = (logged or {}).get("run_id")
    (folder / "metrics.json").write_text(json.dumps(evaluation(model_dir, uar, test_hash, run_id, recall)))
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
    assert low.reason.startswith("not promoted (no improvement over champion v1)")  # issue 17's wording
    assert (low.challenger_uar, low.champion_uar, low.test_manifest_hash) == (0.505, 0.50, "h")
    floor = evaluate_gate(Scores(0.9, per_class_recall={**base, "sad": 0.1}, test_manifest_hash="h"),
                          champ, **kw)
    assert not floor.passed and "sad=0.100" in floor.reason
    other = evaluate_gate(Scores(0.9, per_class_recall=base, test_manifest_hash="h2"), champ, **kw)
    assert not other.passed and "test manifests differ" in other.reason
    assert "re-score the champion" in other.reason and "--manifest" in other.reason  # says what to run
    unknown = evaluate_gate(Scores(0.9, per_class_recall=base), None, **kw)
    assert not unknown.passed and "test_manifest_hash" in unknown.reason


def test_the_gate_reads_an_evaluations_test_scores(tmp_path: Path) -> None:
    from affectflow.contracts.evaluation import parse_evaluation

    ev = parse_evaluation({"format": 2, "model": {"content_hash": "h"},
                           "test": {"n": 4, "uar": 0.5, "wa": 0.6, "macro_f1": 0.4, "test_manifest_hash": "t2",
                                    "per_class_recall": {"sad": 0.5, "calm": None}}}, "metrics.json")
    s = Scores.of(ev)  # null recall = class absent from the test split: left out
    assert (s.uar, s.wa, s.macro_f1, s.per_class_recall, s.test_manifest_hash) == (0.5, 0.6, 0.4, {"sad": 0.5}, "t2")


def test_an_extra_check_can_refuse_after_the_built_in_rules() -> None:
    """The seam for further rules (a generalization guard): a check sees both score sets."""
    base = {c: 0.5 for c in CLASSES}
    champ = Scores(uar=0.50, per_class_recall=base, test_manifest_hash="h")
    chal = Scores(uar=0.60, per_class_recall=base, test_manifest_hash="h")
    seen = []

    def guard(challenger: Scores, champion: Scores | None) -> str | None:
        seen.append((challenger.uar, champion.uar if champion else None))
        return "worse on held-out corpus x" if challenger.uar < 0.7 else None

    kw = {"min_uar_gain": 0.01, "min_class_recall": 0.2, "champion_version": "1"}
    refused = evaluate_gate(chal, champ, extra_checks=[guard], **kw)
    assert not refused.passed and refused.reason == "not promoted (worse on held-out corpus x)"
    assert (refused.challenger_uar, refused.champion_uar) == (0.60, 0.50) and seen == [(0.60, 0.50)]
    assert evaluate_gate(Scores(0.8, per_class_recall=base, test_manifest_hash="h"), champ, extra_checks=[guard],
                         **kw).passed
    assert not evaluate_gate(chal, None, extra_checks=[guard], **kw).passed  # no champion yet: still checked
    low = evaluate_gate(Scores(0.505, per_class_recall=base, test_manifest_hash="h"), champ, extra_checks=[guard],
                        **kw)
    assert "no improvement" in low.reason and len(seen) == 3  # built-in refusal first: the check is not run


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
    assert tags["model_content_hash"] == content_hash(tmp_path / "a" / "model")
    model_tags = reg.model_tags()
    event = json.loads(model_tags[f"{EVENT_PREFIX}000001"])
    assert (event["action"], event["version"], event["previous"]) == ("promote", "1", None)
    assert model_tags[STACK_TOP_TAG] == "1"
    # The champion alias resolves to a loadable model.
    with use_tracking_uri(store["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}@{CHAMPION}")
    assert list(model.predict(["x"])) == ["x"]


def test_promotion_and_rollback_scenario(params: Params, tmp_path: Path, store: dict) -> None:
    do_register(params, tmp_path, store, "first", 0.40)
    worse = do_register(params, tmp_path, store, "worse", 0.405)  # below champion + 0.01
    assert not worse["promoted"] and worse["champion"] == "1" and worse["aliases"] == [CHALLENGER]
    assert worse["gate"]["reason"].startswith("not promoted (no improvement over champion v1)")
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
    last = reg.history()[-1]
    assert last["action"] == "rollback" and last["version"] == "1" and last["previous"] == "3"
    assert [e["action"] for e in reg.history()] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert reg.stack() == ["1"]


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
    params.registry.history_limit = 1  # old events are trimmed, but never those the rollback stack needs
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
    assert [(e["version"], e["forced"]) for e in reg.history()] == [("1", False), ("2", True)]
    assert reg.stack() == ["1", "2"]
    with pytest.raises(RegistryError, match="version 99 not found"):
        reg.promote("99")


def test_model_source_from_model_uri_and_missing_fields(params: Params, tmp_path: Path, store: dict) -> None:
    res = do_register(params, tmp_path, store, "a", 0.4, mlflow={"model_uri": store["model_uri"]})
    assert res["run_id"] == store["run_id"] and res["source"] == store["model_uri"]
    res = do_register(params, tmp_path, store, "b", 0.4, mlflow={"model_uri": f"runs:/{store['run_id']}/model"})
    assert res["source"] == store["model_uri"]
    model_dir, metrics = write_candidate(tmp_path, store, "c", 0.4, mlflow={})
    with pytest.raises(ValueError, match=r"model\.json: field 'mlflow\.run_id' missing"):
        register(params, model_dir, metrics, tmp_path / "c" / "register")
    assert register(params, model_dir, metrics, tmp_path / "c" / "register", run_id=store["run_id"])["version"] == "3"


def test_cli_registry_actions(params: Params, tmp_path: Path, store: dict,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from affectflow.cli import main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults plus --set
    sets = ["--defaults", "--set", f"tracking.uri={store['uri']}", "--set", f"registry.model_name={params.registry.model_name}",
            "--set", "registry.min_uar_gain=0.01"]
    for tag, uar in (("a", 0.40), ("b", 0.30)):
        model_dir, metrics = write_candidate(tmp_path, store, tag, uar)
        assert main(["register", *sets, "--model", str(model_dir), "--metrics", str(metrics),
                     "--out", str(tmp_path / tag / "out")]) == 0
    assert json.loads((tmp_path / "b" / "out" / "promote" / "result.json").read_text())["promoted"] is False

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


# ----------------------------------------------------------------------------- evaluations bound to their model
def test_registration_tags_the_dimensional_scores_with_their_weak_label_flag(params: Params, tmp_path: Path,
                                                                             store: dict) -> None:
    """The evaluation's typed `dimensions` section becomes version tags (shown in `registry list`);
    a model without it gets none."""
    model_dir, metrics = write_candidate(tmp_path, store, "dims", 0.40)
    ev = json.loads(metrics.read_text())
    ev["dimensions"] = {"names": ["arousal", "valence"], "weak_labels": True,
                        "sets": {"test": {"arousal": {"n": 40, "ccc": 0.61234, "ccc_ci_low": 0.5, "ccc_ci_high": 0.7},
                                          "valence": {"n": 40}}}}
    metrics.write_text(json.dumps(ev))
    register(params, model_dir, metrics, tmp_path / "dims" / "register")
    plain = do_register(params, tmp_path, store, "plain", 0.45)
    reg = Registry(params)
    tags = reg.version_tags("1")
    assert (tags["ccc_arousal"], tags["weak_labels"]) == ("0.6123", "true")
    assert "ccc_valence" not in tags  # no CCC computed: no tag, never a made-up number
    summary = {v.version: v.summary() for v in reg.versions()}
    assert summary["1"]["ccc_arousal"] == "0.6123" and summary["1"]["weak_labels"] == "true"
    assert not {"ccc_arousal", "weak_labels"} & set(reg.version_tags(plain["version"]))


def test_register_refuses_another_models_metrics(params: Params, tmp_path: Path, store: dict,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """The measured failure: a weak model registered with a strong model's metrics.json."""
    from affectflow.cli import main

    weak_dir, _ = write_candidate(tmp_path, store, "weak", 0.094)
    strong_dir, strong_metrics = write_candidate(tmp_path, store, "strong", 0.266)
    with pytest.raises(EvaluationMismatch) as err:
        register(params, weak_dir, strong_metrics, tmp_path / "out")
    msg = str(err.value)
    assert str(strong_metrics) in msg and str(weak_dir) in msg
    assert content_hash(strong_dir)[:12] in msg and content_hash(weak_dir)[:12] in msg
    assert not Registry(params).exists() and not (tmp_path / "out" / "result.json").exists()

    # A metrics.json from before evaluations named their model (or hand-written): refused too.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({k: v for k, v in json.loads(strong_metrics.read_text()).items() if k != "model"}))
    with pytest.raises(EvaluationMismatch, match=r"stale\.json: field 'model' missing"):
        register(params, strong_dir, stale, tmp_path / "out")

    # Weights logged by one run, registered as another run's logged model: refused, naming both runs.
    other_dir, other_metrics = write_candidate(tmp_path, store, "other", 0.3, mlflow={"run_id": "0" * 32})
    other_metrics.write_text(json.dumps(evaluation(other_dir, 0.3, "test-A", "0" * 32)))
    with pytest.raises(EvaluationMismatch, match=f"run {'0' * 32}.*run {store['run_id']}"):
        register(params, other_dir, other_metrics, tmp_path / "out", run_id=store["run_id"])

    # The CLI: one error line naming both models, exit 1, nothing registered.
    monkeypatch.chdir(tmp_path)
    sets = ["--defaults", "--set", f"tracking.uri={store['uri']}", "--set", f"registry.model_name={params.registry.model_name}"]
    assert main(["register", *sets, "--model", str(weak_dir), "--metrics", str(strong_metrics)]) == 1
    out = capsys.readouterr().err
    assert out.startswith("error:") and content_hash(weak_dir)[:12] in out and content_hash(strong_dir)[:12] in out
    assert not Registry(params).exists()


def test_an_identical_model_is_not_registered_twice(params: Params, tmp_path: Path, store: dict) -> None:
    import shutil

    first = do_register(params, tmp_path, store, "a", 0.40)
    assert first["version"] == "1" and not first["already_registered"]
    copy = Path(shutil.copytree(tmp_path / "a" / "model", tmp_path / "copy" / "model"))  # same content elsewhere
    again = register(params, copy, tmp_path / "a" / "metrics.json", tmp_path / "again")
    assert again["version"] == "1" and again["already_registered"] and not again["promoted"]
    assert "already registered as v1" in again["note"] and "is the champion" in again["gate"]["reason"]
    worse = do_register(params, tmp_path, store, "b", 0.30)
    assert worse["version"] == "2" and not worse["promoted"]
    worse_again = register(params, tmp_path / "b" / "model", tmp_path / "b" / "metrics.json", tmp_path / "again2")
    assert worse_again["version"] == "2" and worse_again["already_registered"]
    assert worse_again["gate"]["reason"].startswith("not promoted (no improvement over champion v1)")
    assert [v.version for v in Registry(params).versions()] == ["2", "1"]


# ----------------------------------------------------------------------------- history on any backend
def test_history_is_one_small_tag_per_event_and_rollback_walks_back(params: Params, tmp_path: Path,
                                                                    store: dict) -> None:
    from affectflow.tracking.registry import REASON_CHARS, TAG_VALUE_LIMIT

    params.registry.history_limit = 6
    for i, uar in enumerate((0.40, 0.45, 0.50, 0.55)):
        assert do_register(params, tmp_path, store, f"v{i + 1}", uar)["promoted"]
    reg = Registry(params)
    assert reg.stack() == ["1", "2", "3", "4"]
    assert reg.rollback()["champion"] == "3" and reg.rollback()["champion"] == "2"
    forced = reg.promote("4", force=True, reason="x" * 10_000)  # a huge reason is cut, not stored whole
    assert forced["promoted"] and reg.stack() == ["1", "2", "4"]
    assert len(reg.version_tags("4")["promotion_reason"]) <= TAG_VALUE_LIMIT
    for _ in range(5):  # more events than history_limit
        reg.rollback(reason="flaky canary")
        reg.promote("4", force=True, reason="canary fixed")
    tags = reg.model_tags()
    events = {k: v for k, v in tags.items() if k.startswith(EVENT_PREFIX)}
    assert all(len(v) <= MAX_EVENT_CHARS for v in events.values())
    assert all(len(json.loads(v)["reason"]) <= REASON_CHARS for v in events.values())
    assert len(events) == 6 and LEGACY_HISTORY_TAG not in tags and LEGACY_STACK_TAG not in tags
    assert [e["action"] for e in reg.history()][-2:] == ["rollback", "promote"]
    # trimming never drops what the stack needs: rollback still reaches the first champion
    assert reg.stack() == ["1", "2", "4"]
    assert [reg.rollback()["champion"] for _ in range(2)] == ["2", "1"]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


def test_history_in_the_earlier_one_tag_layout_is_converted(params: Params, tmp_path: Path, store: dict) -> None:
    do_register(params, tmp_path, store, "a", 0.40)
    do_register(params, tmp_path, store, "b", 0.50)
    reg = Registry(params)
    name, client = params.registry.model_name, reg.client
    for key in [k for k in reg.model_tags() if k.startswith(EVENT_PREFIX)] + [STACK_TOP_TAG]:
        client.delete_registered_model_tag(name, key)
    client.set_registered_model_tag(name, LEGACY_HISTORY_TAG, json.dumps(
        [{"action": "promote", "version": "1", "previous": None, "reason": "r1", "forced": False, "at": "t1"},
         {"action": "promote", "version": "2", "previous": "1", "reason": "r2", "forced": False, "at": "t2"}]))
    client.set_registered_model_tag(name, LEGACY_STACK_TAG, json.dumps(["1", "2"]))
    assert [e["version"] for e in reg.history()] == ["1", "2", "1", "2"]  # the list, then the stack
    assert reg.stack() == ["1", "2"]
    assert reg.rollback()["champion"] == "1"
    tags = reg.model_tags()
    assert LEGACY_HISTORY_TAG not in tags and LEGACY_STACK_TAG not in tags
    assert len([k for k in tags if k.startswith(EVENT_PREFIX)]) == 5
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


# ----------------------------------------------------------------------------- the champion re-scored on new data
def write_rescore(folder: Path, champion: str, champ_dir: Path, uar: float, test_hash: str, run_id: str | None,
                  *, challenger: tuple[Path, float] | None = None) -> Path:
    """A re-score folder as the rescore stage (affectflow.stages.register.rescore) writes it."""
    from affectflow.stages.register.plan import CHALLENGER_SCORES as RESCORE_CHALLENGER
    from affectflow.stages.register.plan import CHAMPION_SCORES as RESCORE_CHAMPION
    from affectflow.stages.register.plan import PLAN_FILE as RESCORE_PLAN
    from affectflow.stages.register.plan import RescorePlan

    plan = RescorePlan(True, "test", champion_version=champion, champion_content_hash=content_hash(champ_dir),
                       comparison_test_manifest_hash=test_hash, excluded_speakers=("ravdess/07",) if challenger else (),
                       challenger_rescored=challenger is not None)
    for sub, (model, score) in ((RESCORE_CHAMPION, (champ_dir, uar)), (RESCORE_CHALLENGER, challenger)):
        if model is not None:
            (folder / sub).mkdir(parents=True)
            (folder / sub / "metrics.json").write_text(json.dumps(evaluation(model, score, test_hash, run_id)))
        if challenger is None:
            break
    (folder / RESCORE_PLAN).write_text(json.dumps(plan.to_json()))
    return folder


def test_a_stale_champion_is_compared_on_the_challengers_test_set(params: Params, tmp_path: Path,
                                                                   store: dict) -> None:
    do_register(params, tmp_path, store, "champ", 0.60, test_hash="old")
    chal_dir, chal_metrics = write_candidate(tmp_path, store, "chal", 0.55, test_hash="new")
    stale = register(params, chal_dir, chal_metrics, tmp_path / "stale")
    assert not stale["promoted"] and "was not scored on this test set" in stale["gate"]["reason"]

    # A re-score of another model as the champion's: the gate refuses it, naming both.
    bogus = write_rescore(tmp_path / "bogus", "1", chal_dir, 0.10, "new", store["run_id"])
    with pytest.raises(EvaluationMismatch, match="champion v1 is model"):
        register(params, chal_dir, chal_metrics, tmp_path / "r0", rescore=bogus)
    # ... also as the workdir's rescore folder: `affectflow step register` (dvc.yaml) reads it ...
    from affectflow.stages.runner import run_stage

    write_rescore(params.workdir() / "rescore", "1", chal_dir, 0.10, "new", store["run_id"])
    with pytest.raises(EvaluationMismatch, match="champion v1 is model"):
        run_stage(params, "register", {"model": chal_dir, "evaluation": chal_metrics}, tmp_path / "r0")
    # ... but a chain (`affectflow register`) hands on only what it ran, never a stale workdir folder
    again = register(params, chal_dir, chal_metrics, tmp_path / "r00")
    assert again["rescore"] is None and "was not scored on this test set" in again["gate"]["reason"]

    folder = write_rescore(tmp_path / "rescore", "1", tmp_path / "champ" / "model", 0.50, "new", store["run_id"])
    res = register(params, chal_dir, chal_metrics, tmp_path / "r", rescore=folder)
    assert res["version"] == "2" and res["already_registered"] and res["promoted"] and res["champion"] == "2"
    gate = res["gate"]
    assert (gate["test_manifest_hash"], gate["challenger_uar"], gate["champion_uar"], gate["rescored"]) == (
        "new", 0.55, 0.50, True)
    assert res["comparison"]["champion_version"] == "1" and res["rescore"]["needed"]
    reg = Registry(params)
    assert json.loads(reg.version_tags("1")["score_on.new"])["uar"] == 0.50  # both scores on the versions
    tags = reg.version_tags("2")
    assert (tags["gate_test_manifest_hash"], tags["gate_uar"], tags["gate_champion_uar"]) == (
        "new", "0.550000", "0.500000")

    # The recorded re-score is reused: a later challenger on the same test set needs no new one.
    reg.rollback()
    later = do_register(params, tmp_path, store, "later", 0.505, test_hash="new")
    assert not later["promoted"] and later["gate"]["rescored"] and later["gate"]["champion_uar"] == 0.50
    assert later["gate"]["reason"].startswith("not promoted (no improvement over champion v1)")


def test_on_a_reduced_set_both_are_scored_on_it(params: Params, tmp_path: Path, store: dict) -> None:
    do_register(params, tmp_path, store, "champ", 0.60, test_hash="old")
    chal_dir, chal_metrics = write_candidate(tmp_path, store, "chal", 0.55, test_hash="new")
    folder = write_rescore(tmp_path / "rescore", "1", tmp_path / "champ" / "model", 0.40, "reduced",
                           store["run_id"], challenger=(chal_dir, 0.58))
    res = register(params, chal_dir, chal_metrics, tmp_path / "r", rescore=folder)
    assert res["promoted"] and res["comparison"]["excluded_speakers"] == ["ravdess/07"]
    assert (res["gate"]["test_manifest_hash"], res["gate"]["challenger_uar"]) == ("reduced", 0.58)
    reg = Registry(params)
    assert json.loads(reg.version_tags("2")["score_on.reduced"])["uar"] == 0.58
    assert reg.version_tags("2")["uar"] == "0.550000"  # its own evaluation stays what it was


def test_the_champion_folder_is_fetched_from_its_run_and_checked(params: Params, tmp_path: Path,
                                                                 store: dict) -> None:
    import shutil

    from affectflow.stages.register.rescore import fetch_champion

    logged = Path(shutil.copytree(store["folder"], tmp_path / "logged" / "model"))
    metrics = tmp_path / "logged" / "metrics.json"
    metrics.write_text(json.dumps(evaluation(logged, 0.4, "t", store["run_id"])))
    register(params, logged, metrics, tmp_path / "r1")
    reg = Registry(params)
    got = fetch_champion(reg, "1", tmp_path / "fetched")
    assert content_hash(got) == store["folder_hash"] and (got / "model.pt").read_bytes() == b"logged weights"
    # A version whose recorded content differs from what its run logged is not scored as if it were.
    other_dir, other_metrics = write_candidate(tmp_path, store, "other", 0.3)
    register(params, other_dir, other_metrics, tmp_path / "r2")
    with pytest.raises(EvaluationMismatch, match=f"registered as model {content_hash(other_dir)[:12]}"):
        fetch_champion(reg, "2", tmp_path / "fetched2")


def test_comparison_rows_leave_out_what_the_champion_saw() -> None:
    import pandas as pd

    from affectflow.contracts.model_folder import ModelMeta, TrainFacts
    from affectflow.stages.register.rescore import comparison_rows

    def meta(corpora: list[str], train: list[str], val: list[str]) -> ModelMeta:
        return ModelMeta(arch="egemaps_mlp", classes=list(CLASSES), feature="egemaps", feature_config={},
                         audio={"sample_rate": 16000}, normalization={}, arch_config={}, input_dim=88,
                         train=TrainFacts(corpora=corpora, train_speakers=train, val_speakers=val))

    df = pd.DataFrame({"speaker": ["a/1", "a/2", "a/3", "a/4", "b/1"], "corpus": ["a", "a", "a", "a", "b"],
                       "split": ["train", "test", "test", "test", "test"]})
    champion, challenger = meta(["a"], ["a/1", "a/2"], ["a/3"]), meta(["a", "b"], ["a/1"], [])
    rows, excluded = comparison_rows(df, champion, challenger)
    assert excluded == ["a/2", "a/3"]
    assert rows["speaker"].tolist() == ["a/1", "a/4"]  # training rows stay; b is not the champion's corpus
    same, none = comparison_rows(df[df["corpus"] == "a"], meta(["a"], ["a/1"], []), meta(["a"], ["a/1"], []))
    assert none == [] and len(same) == 4


def test_cli_registry_list_imports_only_what_it_needs(store: dict, tmp_path: Path) -> None:
    """`affectflow registry list` from the command line: MLflow's registry, not the model card's corpus
    tables, torch or kfp; the collector is back on after MLflow's import and frozen only on the way
    out (the speed this buys is measured in benchmarks/RESULTS.md, not here)."""
    import os
    import subprocess
    import sys

    probe = ("import gc, sys\nfrom affectflow import cli\n"
             f"sys.argv = ['affectflow', 'registry', 'list', '--defaults', '--set', 'tracking.uri={store['uri']}']\n"
             "code = cli.main()\n"
             "heavy = ('torch', 'kfp', 'affectflow.corpora', 'affectflow.tracking.model_card', 'affectflow.serving')\n"
             "print(code, gc.isenabled(), gc.get_freeze_count() > 0, 'mlflow' in sys.modules,\n"
             "      sorted(m for m in heavy if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.strip().splitlines()
    assert "no versions registered" in out[0]
    assert out[-1] == "0 True True True []"
