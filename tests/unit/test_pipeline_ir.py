"""The compiled Kubeflow IR: committed and fresh, one task per stage, switches, GPUs, secrets,
retries, caching, exit handler, and run-form parameters with the defaults of params.yaml.

Also the two tables the pipeline relies on: which sections each stage is handed (checked against
what the stage modules read, and against dvc.yaml), and the run-form <-> params round trip the
`resolve-params` task performs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from affectflow.config import Params, load_params
from affectflow.orchestration import kfp_io
from affectflow.orchestration import pipeline as P

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "params.yaml"
STAGES = ("ingest", "validate", "features", "augment", "pretrain", "train", "evaluate", "register")
GPU_STAGES = ("augment", "pretrain", "train")
GPU_SETTINGS = {
    "pipeline.gpu_limit": 2,
    "pipeline.node_selector": {"nvidia.com/gpu.present": "true"},
    "pipeline.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def _compile(params: Params, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    P.compile_pipeline(params, path)
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
    path = REPO / P.COMPILED
    assert path.is_file(), f"{path} missing: run `affectflow pipeline compile`"
    assert not P.stale(base, path), f"{path} is stale: run `affectflow pipeline compile` and commit it"


def test_stale_detects_a_changed_default(base: Params, tmp_path: Path) -> None:
    out = P.compile_pipeline(base, tmp_path / "ir.yaml")
    changed = load_params(PARAMS_YAML, {"train.epochs": base.train.epochs + 1})
    assert P.stale(changed, out)


# ----------------------------------------------------------------------------- DAG shape
def test_one_task_per_stage(ir: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = ir
    refs = [t["componentRef"]["name"] for t in _tasks(spec).values()]
    for stage in STAGES:
        assert refs.count(f"comp-{stage}") == 1, f"stage {stage}: {refs.count(f'comp-{stage}')} tasks"
    leaves = {r for r in refs if not r.startswith(("comp-condition", "comp-exit-handler"))}
    assert leaves == {f"comp-{s}" for s in STAGES} | {
        "comp-resolve-params", "comp-skip-augment", "comp-skip-pretrain", "comp-promote", "comp-record-run-status"}


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

    assert any("augment__enabled'] == true" in c for c in guarded_by("comp-augment"))
    assert any("augment__enabled'] == true)" in c and c.startswith("!") for c in guarded_by("comp-skip-augment"))
    assert any("pretrain__enabled'] == true" in c for c in guarded_by("comp-pretrain"))
    assert any("register-Output'] == true" in c for c in guarded_by("comp-promote"))
    # train consumes whichever branch ran (dsl.OneOf), so it runs in both cases
    train_inputs = tasks["train"]["inputs"]["artifacts"]
    assert {"synthetic", "encoder"} <= set(train_inputs)


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


def test_secrets_become_environment(ir: tuple[dict[str, Any], dict[str, Any]], base: Params) -> None:
    spec, platform = ir
    tasks = _tasks(spec)

    def secrets(task: str) -> dict[str, set[str]]:
        cfg = platform.get(_executor(spec, tasks[task]), {})
        return {s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in cfg.get("secretAsEnv", [])}

    for stage in ("ingest", "validate", "features", "augment", "pretrain", "train", "evaluate"):
        s3 = secrets(stage)[base.pipeline.s3_secret]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= s3, stage
    for task in ("train", "evaluate", "register", "promote", "record-run-status"):
        assert "MLFLOW_TRACKING_URI" in secrets(task)[base.pipeline.mlflow_secret], task
    assert base.pipeline.s3_secret not in secrets("register")  # registry needs MLflow only


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
    for task in ("register", "promote", "record-run-status"):
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
def _plain(v: Any) -> Any:
    """JSON numbers as the IR stores them: ints and floats compare by value."""
    return json.loads(json.dumps(v))


def test_every_tunable_is_a_run_form_field_with_the_params_yaml_default(
        ir: tuple[dict[str, Any], dict[str, Any]], base: Params) -> None:
    spec, _ = ir
    fields = spec["root"]["inputDefinitions"]["parameters"]
    tunables = P.tunables(base)
    assert set(fields) == {t.name for t in tunables} | {P.DATA_VERSION}
    for t in tunables:
        assert _plain(fields[t.name]["defaultValue"]) == _plain(t.encode(t.default)), t.key
    # straight from the file, not through Params: what a person edits is what the form shows
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    assert fields["train__epochs"]["defaultValue"] == raw["train"]["epochs"]
    assert fields["train__lr"]["defaultValue"] == pytest.approx(raw["train"]["lr"])
    assert fields["features__logmel__n_mels"]["defaultValue"] == raw["features"]["logmel"]["n_mels"]
    assert fields["ingest__classes"]["defaultValue"] == raw["ingest"]["classes"]
    assert fields["augment__enabled"]["parameterType"] == "BOOLEAN"
    assert fields["train__epochs"]["parameterType"] == "NUMBER_INTEGER"
    assert fields["ingest__corpora"]["parameterType"] == "LIST"
    assert not any(name.startswith("pipeline__") for name in fields)  # compile-time section


def test_names_are_identifiers_without_dots(base: Params) -> None:
    for t in P.tunables(base):
        assert t.name.isidentifier() and "." not in t.name, t.name
        assert t.name.replace(P.SEP, ".") == t.key


def test_union_fields_travel_as_yaml_text(base: Params, tmp_path: Path) -> None:
    kinds = {t.key: t.kind for t in P.tunables(base)}
    assert kinds["train.epochs"] == "int" and kinds["augment.enabled"] == "bool"
    assert kinds["ingest.corpora"] == "list" and kinds["ingest.label_map"] == "dict"
    union = [k for k, v in kinds.items() if v == "yaml"]
    assert "augment.use_gpu" in union  # bool | "auto"
    values = {t.key: t.encode(t.default) for t in P.tunables(base)}
    values["augment.use_gpu"] = "true"
    kfp_io.resolve_params(values, union, tmp_path / "params.yaml")
    assert load_params(tmp_path / "params.yaml").augment.use_gpu is True


def test_resolve_params_round_trip(base: Params, tmp_path: Path) -> None:
    """What the resolve-params task gets (ints as floats, as kfp.local passes them) -> what each
    stage builds back: the sections it is handed equal params.yaml's."""
    tunables = P.tunables(base)

    def as_kfp_local(v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            return float(v)
        if isinstance(v, list):
            return [as_kfp_local(x) for x in v]
        return v

    values = {t.key: as_kfp_local(t.encode(t.default)) for t in tunables}
    configs = kfp_io.resolve_params(values, [t.key for t in tunables if t.kind == "yaml"], tmp_path / "p.yaml")
    assert len(configs) == len(P.STAGES)
    for stage, config in zip(P.STAGES, configs, strict=True):
        rebuilt = kfp_io.stage_params(config, stage)
        for section in P.STAGE_SECTIONS[stage]:
            assert getattr(rebuilt, section) == getattr(base, section), (stage, section)
        assert config == P.stage_config(base, stage)  # canonical: identical cache keys
    full = load_params(tmp_path / "p.yaml")
    for section in Params.model_fields:
        if section not in P.COMPILE_TIME_SECTIONS:
            assert getattr(full, section) == getattr(base, section), section


def test_invalid_run_form_value_names_the_key(base: Params, tmp_path: Path) -> None:
    values = {t.key: t.encode(t.default) for t in P.tunables(base)}
    values["train.epochs"] = 0
    with pytest.raises(ValueError, match=r"train\.epochs"):
        kfp_io.resolve_params(values, [], tmp_path / "p.yaml")


def test_a_training_knob_leaves_upstream_configs_unchanged(base: Params) -> None:
    changed = load_params(PARAMS_YAML, {"train.epochs": base.train.epochs + 1})
    same = {s for s in P.STAGES if P.stage_config(base, s) == P.stage_config(changed, s)}
    assert same == {"ingest", "validate", "features", "augment"}
    feats = load_params(PARAMS_YAML, {"features.logmel.n_mels": 40})
    same = {s for s in P.STAGES if P.stage_config(base, s) == P.stage_config(feats, s)}
    assert same == {"ingest"}


def test_pipeline_arguments_are_only_the_differences(base: Params) -> None:
    assert P.pipeline_arguments(base, base) == {}
    changed = load_params(PARAMS_YAML, {"train.epochs": 3, "augment.use_gpu": False, "augment.enabled": True})
    assert P.pipeline_arguments(changed, base) == {"train__epochs": 3, "augment__use_gpu": "false",
                                                   "augment__enabled": True}


# ----------------------------------------------------------------------------- sections table
SRC = REPO / "src" / "affectflow"
STAGE_MODULES = {
    "ingest": ["stages/ingest.py", "contracts/splits.py", "corpora", "contracts/manifest.py"],
    "validate": ["stages/validate.py"],
    "features": ["stages/features.py", "features"],
    "augment": ["stages/augment", "models/wgan.py", "models/aaec.py"],
    "pretrain": ["stages/pretrain", "models/dann.py"],
    "train": ["stages/train", "models"],
    "evaluate": ["stages/evaluate.py", "metrics.py"],
}
"""Library code each stage runs (its own modules and stage-specific helpers)."""
ATTR = re.compile(r"\bparams\.([a-z0-9_]+)\b")
HASHED = re.compile(r"section_hash\(([^)]*)\)")
HELPERS = {"workdir", "corpus_root", "section_hash", "model_dump", "model_copy"}


def _sections_read(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for f in [path] if path.is_file() else sorted(path.rglob("*.py")):
            text = f.read_text()
            found |= set(ATTR.findall(text)) - HELPERS
            for args in HASHED.findall(text):
                found |= set(re.findall(r"[\"']([a-z0-9_]+)[\"']", args))
    return found


@pytest.mark.parametrize("stage", list(STAGE_MODULES))
def test_stage_is_handed_every_section_it_reads(stage: str) -> None:
    paths = [SRC / m for m in STAGE_MODULES[stage] if (SRC / m).exists()]
    if not paths:
        pytest.skip(f"no modules of stage {stage} yet")
    read = _sections_read(paths) & set(Params.model_fields)
    missing = read - set(P.STAGE_SECTIONS[stage])
    assert not missing, f"stage {stage} reads params.{sorted(missing)} but STAGE_SECTIONS does not hand them"


def test_dvc_yaml_mirrors_the_dag_and_the_sections_table() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == list(STAGES)
    for stage in P.STAGES:
        assert set(dvc[stage]["params"]) == set(P.STAGE_SECTIONS[stage]), \
            f"dvc.yaml stage {stage}: params must list {P.STAGE_SECTIONS[stage]}"
    assert set(dvc["register"]["params"]) == {"registry", "tracking"}
    assert any("metrics.json" in next(iter(m)) for m in dvc["evaluate"]["metrics"])
    assert any("confusion.png" in next(iter(p)) for p in dvc["evaluate"]["plots"])
