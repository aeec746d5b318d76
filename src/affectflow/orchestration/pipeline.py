"""The Kubeflow training pipeline from the library side: parameters, compile, local run, cluster calls.

One DAG (`pipelines/train_pipeline.py`, components in `components/`) runs in two places with the
same component code: embedded through `kfp.local` (SubprocessRunner, no container, this venv) and
on a Kubeflow Pipelines cluster (uploaded IR YAML, the project images). This module

- turns `params.yaml` into pipeline parameters: every tunable leaf becomes one run-form field
  named `section__key` (KFP names cannot hold dots), default = its params.yaml value;
- says which sections each stage reads (`STAGE_SECTIONS`), shared by the pipeline (what a task is
  handed, hence what its cache key covers) and by `dvc.yaml` (each stage's `params:`);
- compiles the IR, runs it locally (with per-task timing and the run's registry outcome), and
  talks to a cluster through `kfp.Client` (upload, submit, schedule).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import tempfile
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from affectflow.config import Params, Section

PIPELINE_NAME = "affectflow-train"
COMPILED = Path("pipelines") / "compiled" / f"{PIPELINE_NAME}.yaml"
"""The committed IR, relative to the project root."""
SEP = "__"
"""Replaces the dot of `section.key` in pipeline parameter names."""
DATA_VERSION = "data_version"
"""Extra run-form field handed to ingest only: a data stamp, so its cached output is not reused
after the audio changed (`affectflow pipeline run` fills it with `lineage.data_fingerprint`)."""
COMPILE_TIME_SECTIONS = ("pipeline",)
"""Sections baked into the IR at compile time (images, GPUs, secrets): not run-form fields."""

STAGES = ("ingest", "validate", "features", "augment", "pretrain", "train", "evaluate")
"""Stages handed a configuration string by the params task (register reads the full params.yaml)."""
_DATA = ("s3", "paths", "audio", "ingest", "splits")
_ALL = tuple(s for s in Params.model_fields if s not in COMPILE_TIME_SECTIONS)
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": _DATA,
    "validate": (*_DATA, "validation", "features"),
    "features": (*_DATA, "features"),
    "augment": (*_DATA, "features", "augment", "tracking"),
    "pretrain": (*_DATA, "features", "train", "pretrain", "tracking"),
    "train": _ALL,
    "evaluate": _ALL,
}
"""Sections each stage reads; a task is handed exactly these, so its cache key covers them and a
change elsewhere leaves it cached (a new `train.*` value re-runs pretrain, train, evaluate and
register, never ingest or features). Train and evaluate get every section: their MLflow run logs
the whole configuration, and it must be the run's, not defaults. A section a stage reads but is
not handed would silently take its default: tests/unit/test_pipeline_ir.py checks the stage
modules' `params.<section>` uses against this table, and dvc.yaml's `params:` against it."""

Kind = Literal["bool", "int", "float", "str", "list", "dict", "yaml"]
KFP_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "list": list,
                              "dict": dict, "yaml": str}


class PipelineError(RuntimeError):
    """The pipeline cannot be built, compiled, run or sent; the message says which part and why."""


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Tunable:
    """One leaf of params.yaml as a pipeline parameter."""

    key: str
    """Dotted key, e.g. `train.epochs`."""
    kind: Kind
    """How it travels: a KFP scalar/list/dict, or `yaml` (union-typed fields) as text."""
    default: Any

    @property
    def name(self) -> str:
        return self.key.replace(".", SEP)

    def encode(self, value: Any) -> Any:
        """The value as the run form holds it (yaml kinds as text)."""
        if self.kind != "yaml":
            return list(value) if self.kind == "list" else value
        return value if isinstance(value, str) else json.dumps(value)


def _kind(annotation: Any) -> Kind:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if annotation is str:
        return "str"
    if origin is Literal:
        args = typing.get_args(annotation)
        return "str" if all(isinstance(a, str) for a in args) else "yaml"
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return "list"
    if origin is dict or annotation is dict:
        return "dict"
    return "yaml"  # unions (bool | "auto"), optionals: text parsed as YAML by the params task


def tunables(params: Params) -> list[Tunable]:
    """Every leaf field of params (sections walked, lists and dicts are leaves), in file order."""
    dumped = params.model_dump(mode="json")
    out: list[Tunable] = []

    def walk(model: BaseModel, tree: dict[str, Any], prefix: str) -> None:
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(value, Section):
                walk(value, tree[name], key)
            else:
                out.append(Tunable(key, _kind(info.annotation), tree[name]))

    for section in type(params).model_fields:
        if section not in COMPILE_TIME_SECTIONS:
            walk(getattr(params, section), dumped[section], section)
    return out


def pipeline_arguments(params: Params, base: Params) -> dict[str, Any]:
    """Run-form values for `params` where they differ from `base` (the compiled defaults)."""
    defaults = {t.key: t.default for t in tunables(base)}
    return {t.name: t.encode(t.default) for t in tunables(params) if defaults.get(t.key) != t.default}


def stage_config(params: Params, stage: str) -> str:
    """The configuration string a stage task is handed: its sections, canonical JSON."""
    try:
        sections = STAGE_SECTIONS[stage]
    except KeyError:
        raise PipelineError(f"unknown stage {stage!r}; known: {', '.join(STAGE_SECTIONS)}") from None
    return json.dumps({s: getattr(params, s).model_dump(mode="json") for s in sections}, sort_keys=True)


# ----------------------------------------------------------------------------- building and compiling
def project_root() -> Path:
    """The checkout holding components/ and pipelines/: the current directory or a parent of it,
    else the one this package was installed from (editable install)."""
    here = Path.cwd().resolve()
    for cand in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (cand / "pipelines" / "train_pipeline.py").is_file() and (cand / "components").is_dir():
            return cand
    raise PipelineError(f"pipelines/train_pipeline.py not found from {here} upwards: run from the "
                        "affectflow checkout")


def pipeline_module() -> types.ModuleType:
    root = str(project_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("pipelines.train_pipeline")


def build(params: Params) -> Any:
    """The pipeline (a KFP GraphComponent) with run-form defaults from `params`."""
    return pipeline_module().build_pipeline(params)


def compile_pipeline(params: Params, out: str | Path | None = None) -> Path:
    """Compile the IR YAML (default: pipelines/compiled/affectflow-train.yaml in the checkout)."""
    from kfp import compiler

    from affectflow.storage import atomic_path

    target = Path(out) if out else project_root() / COMPILED
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        compiler.Compiler().compile(build(params), str(tmp))
    return target


def stale(params: Params, compiled: str | Path | None = None) -> bool:
    """True when the committed IR differs from a fresh compile of the same params."""
    path = Path(compiled) if compiled else project_root() / COMPILED
    if not path.is_file():
        return True
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_pipeline(params, Path(tmp) / "fresh.yaml")
        return _documents(fresh) != _documents(path)


def _documents(path: Path) -> list[Any]:
    """The IR as data: KFP's header comment lists struct defaults in an order that varies between
    processes, so two compiles of one pipeline differ as text but not as YAML."""
    import yaml

    return list(yaml.safe_load_all(path.read_text()))


# ----------------------------------------------------------------------------- local run
@dataclass
class TaskRecord:
    status: str = "RUNNING"
    seconds: float = 0.0
    cached: bool = False
    attempts: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)


def _artifact_uri(value: Any) -> Any:
    if isinstance(value, list):
        return [_artifact_uri(v) for v in value]
    uri = getattr(value, "uri", None)
    return {"uri": uri, "metadata": dict(getattr(value, "metadata", {}) or {})} if uri else value


@contextlib.contextmanager
def _instrumented_kfp_local(tasks: dict[str, TaskRecord]) -> Iterator[None]:
    """Time each task, note cache hits and keep outputs; let dsl.OneOf select artifacts.

    kfp.local 2.17 resolves `dsl.OneOf` for parameters but raises on artifacts ("Expected 1
    artifact in ArtifactSelectorSpec"); the cluster backend supports both. The replacement below
    applies the parameter rule (exactly one branch produced it) to artifacts, for this run only.
    """
    from kfp.local import cache as cache_module
    from kfp.local.orchestrator import orchestrator_utils, task_executor

    utils = orchestrator_utils.OrchestratorUtils
    original_select = utils.__dict__["get_dag_output_artifacts"]
    original_exec = task_executor.execute_single_task
    original_get = cache_module.LocalCache.get
    hits: list[bool] = []

    def get_dag_output_artifacts(cls: Any, dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            found = []
            for sel in spec.artifact_selectors:
                try:
                    found.append(io_store.get_task_output(sel.producer_subtask, sel.output_artifact_key))
                except (KeyError, ValueError):
                    continue
            if len(found) != 1:
                raise ValueError(f"dsl.OneOf output {key!r}: {len(found)} branches produced it, expected 1")
            outputs[key] = found[0]
        return outputs

    def cache_get(self: Any, key: str) -> Any:
        value = original_get(self, key)
        hits.append(value is not None)
        return value

    def execute_single_task(*args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("task_name", args[0] if args else "?")
        record = tasks.setdefault(name, TaskRecord())
        hits.clear()
        start = time.perf_counter()
        outputs, status = original_exec(*args, **kwargs)
        record.seconds += time.perf_counter() - start
        record.cached = bool(hits and hits[0])
        record.attempts += 1
        record.status = status.name
        record.outputs = {k: _artifact_uri(v) for k, v in (outputs or {}).items()}
        return outputs, status

    utils.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    task_executor.execute_single_task = execute_single_task
    cache_module.LocalCache.get = cache_get
    try:
        yield
    finally:
        utils.get_dag_output_artifacts = original_select
        task_executor.execute_single_task = original_exec
        cache_module.LocalCache.get = original_get


def local_root(params: Params) -> Path:
    """Where kfp.local keeps task outputs and its cache: <workdir>/kfp (local workdirs only)."""
    workdir = params.paths.workdir
    return Path("artifacts" if "://" in workdir else workdir) / "kfp"


def run_local(base: Params, params: Params, *, pipeline_root: str | Path | None = None,
              cache: bool = True, data_version: str | None = None, retries: int = 0) -> dict[str, Any]:
    """Run the whole DAG with kfp.local's SubprocessRunner in this environment.

    `base` gives the run-form defaults (as compiled from params.yaml); `params` is what this run
    uses — the difference travels as pipeline arguments, exactly as a run submitted from the UI.
    Returns per-task status, seconds and cache hits, the evaluation metrics and the registry
    outcome (also written to `<pipeline_root>/last_run.json`). Raises PipelineError naming the
    failed task; the exit handler has recorded the failure by then. `retries` replaces
    pipeline.retries: on one machine a failure is rarely transient, so by default none.
    """
    from kfp import local

    from affectflow.storage import atomic_write_json
    from affectflow.tracking.lineage import data_fingerprint

    root = Path(pipeline_root or local_root(params)).resolve()
    args = pipeline_arguments(params, base)
    args[DATA_VERSION] = data_version if data_version is not None else data_fingerprint(params)
    compiled = base.model_copy(deep=True)
    compiled.pipeline.retries = retries
    pipe = build(compiled)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True, enable_caching=cache)
    tasks: dict[str, TaskRecord] = {}
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    error: str | None = None
    with warnings.catch_warnings(), _instrumented_kfp_local(tasks):
        # The components name the project image; SubprocessRunner warns that it runs them in this
        # Python instead, which is the point of a local run.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Accelerators, display names: cluster settings kfp.local cannot apply, by design.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            pipe(**args)
        except RuntimeError as e:
            error = str(e)
    summary = _run_summary(tasks, args, root, started, time.perf_counter() - t0, error)
    atomic_write_json(root / "last_run.json", summary)
    if error:
        failed = [n for n, r in tasks.items() if r.status == "FAILURE"]
        raise PipelineError(f"local pipeline run failed in task(s) {', '.join(failed) or '?'}; "
                            f"summary: {root / 'last_run.json'}")
    return summary


def _read_artifact_json(record: TaskRecord | None, output: str, name: str = "") -> Any:
    if record is None or output not in record.outputs:
        return None
    uri = record.outputs[output]["uri"]
    path = Path(uri) / name if name else Path(uri)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _run_summary(tasks: dict[str, TaskRecord], args: Mapping[str, Any], root: Path, started: datetime,
                 wall: float, error: str | None) -> dict[str, Any]:
    register = _read_artifact_json(tasks.get("register"), "result", "result.json")
    promotion = _read_artifact_json(tasks.get("promote"), "result", "result.json")
    metrics = _read_artifact_json(tasks.get("evaluate"), "metrics")
    return {
        "pipeline": PIPELINE_NAME, "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 2), "status": "FAILURE" if error else "SUCCESS", "error": error,
        "pipeline_root": str(root), "arguments": dict(args),
        "tasks": {n: {"status": r.status, "seconds": round(r.seconds, 2), "cached": r.cached,
                      "attempts": r.attempts} for n, r in tasks.items()},
        "metrics": metrics, "register": register, "promotion": promotion,
    }


# ----------------------------------------------------------------------------- DVC steps
STEPS = ("augment", "pretrain", "train")
"""Stages whose DVC command goes through `affectflow pipeline step`: the on/off switches."""


def run_step(params: Params, stage: str) -> dict[str, Any]:
    """Run `stage` in the workdir layout the way the pipeline does (dvc.yaml's augment, pretrain
    and train commands).

    DVC has no conditional stages, so a switched-off augment / pretrain stage still runs and
    leaves the placeholder the DAG's else-branch leaves (a folder with a SKIPPED note); train
    then takes a synthetic set / encoder only from a folder that is not a placeholder.
    """
    from affectflow.orchestration.kfp_io import optional_dir, write_skipped

    wd = params.workdir()
    manifest, store = wd / "ingest" / "manifest.parquet", wd / "features"
    if stage in ("augment", "pretrain"):
        out = wd / stage
        if not getattr(params, stage).enabled:
            write_skipped(out, f"{stage}.enabled is false")
            return {"stage": stage, "skipped": True, "out": str(out)}
        if stage == "augment":
            from affectflow.stages.augment.stage import augment as run_stage
        else:
            from affectflow.stages.pretrain.stage import pretrain as run_stage
        res = run_stage(params, manifest, store, out)
        return {"stage": stage, "skipped": False, "out": str(out), **(getattr(res, "summary", None) or {})}
    if stage == "train":
        from affectflow.stages.train.stage import train

        res = train(params, manifest, store, wd / "train", pretrained=optional_dir(wd / "pretrain", "encoder"),
                    synthetic=optional_dir(wd / "augment"))
        return {"stage": stage, **res.summary}
    raise PipelineError(f"pipeline step {stage!r}: expected one of {', '.join(STEPS)}")


# ----------------------------------------------------------------------------- cluster
def validate_cron(expr: str) -> str:
    """A 6-field cron (seconds first, as Kubeflow's scheduler reads it); raises ValueError otherwise."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 6:
        raise ValueError(f"cron {expr!r}: expected 6 fields (second minute hour day month weekday), "
                         f"got {len(fields)}")
    if not croniter.is_valid(expr, second_at_beginning=True):
        raise ValueError(f"cron {expr!r}: not a valid cron expression")
    return " ".join(fields)


def next_fire_times(expr: str, n: int = 3, start: datetime | None = None) -> list[str]:
    from croniter import croniter

    it = croniter(validate_cron(expr), start or datetime.now(timezone.utc), second_at_beginning=True)
    return [it.get_next(datetime).isoformat(timespec="seconds") for _ in range(n)]


def kfp_client(params: Params, host: str | None = None, namespace: str | None = None,
               factory: Callable[..., Any] | None = None) -> Any:
    """kfp.Client on `host` (or pipeline.host); `factory` replaces kfp.Client in tests."""
    endpoint = host or params.pipeline.host
    if not endpoint:
        raise PipelineError("pipeline.host is empty: pass --host or set pipeline.host in params.yaml")
    if factory is None:
        import kfp

        factory = kfp.Client
    return factory(host=endpoint, namespace=namespace or params.pipeline.namespace)


def _version_name(package: Path) -> str:
    import hashlib

    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:8]
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{digest}"


def upload(client: Any, package: str | Path, *, name: str = PIPELINE_NAME, version: str | None = None,
           description: str = "") -> dict[str, Any]:
    """Upload the IR as a new pipeline, or as a new version of the pipeline of that name."""
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found (run `affectflow pipeline compile`)")
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        p = client.upload_pipeline(pipeline_package_path=str(package), pipeline_name=name,
                                   description=description or None)
        pipeline_id = p.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1)
        first = (getattr(versions, "pipeline_versions", None) or [None])[0]
        return {"pipeline_id": pipeline_id, "version_id": getattr(first, "pipeline_version_id", None),
                "version": getattr(first, "display_name", None), "created_pipeline": True}
    vname = version or _version_name(package)
    v = client.upload_pipeline_version(pipeline_package_path=str(package), pipeline_version_name=vname,
                                       pipeline_id=pipeline_id, description=description or None)
    return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id, "version": vname,
            "created_pipeline": False}


def submit(client: Any, package: str | Path, arguments: Mapping[str, Any], *, experiment: str,
           run_name: str | None = None, namespace: str | None = None, cache: bool = True) -> dict[str, Any]:
    """Create one run of the compiled pipeline with `arguments` (run-form values)."""
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found (run `affectflow pipeline compile`)")
    name = run_name or f"{PIPELINE_NAME}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    res = client.create_run_from_pipeline_package(
        str(package), arguments=dict(arguments), run_name=name, experiment_name=experiment,
        namespace=namespace, enable_caching=cache)
    return {"run_id": res.run_id, "run_name": name, "experiment": experiment}


SCHEDULE_PAGE_SIZE = 100
"""Recurring runs asked for per `list_recurring_runs` page while looking for an existing schedule."""
SCHEDULE_DESCRIPTION = "{pipeline} schedule; IR sha256 {digest}; caching {caching}"
"""Description of the recurring runs `schedule` creates: it records the IR and the caching choice,
which the API does not return in a comparable form, so a re-run can tell whether they changed."""


class ScheduleConflictError(PipelineError):
    """A recurring run of that name exists with other settings; `--replace` swaps it."""


def _ir_digest(package: Path) -> str:
    """sha256 of the IR as data (two compiles of one pipeline differ as text, see `_documents`)."""
    import hashlib

    canonical = json.dumps(_documents(package), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _schedule_settings(run: Any) -> dict[str, Any]:
    """What decides whether a recurring run is the one asked for, read from a kfp_server_api
    V2beta1RecurringRun (max_concurrency is an int64, which the API sends as a string)."""
    cron = getattr(getattr(getattr(run, "trigger", None), "cron_schedule", None), "cron", None)
    concurrency = getattr(run, "max_concurrency", None)
    return {"cron": " ".join(cron.split()) if cron else None,
            "max_concurrency": int(concurrency) if concurrency is not None else None,
            "params": dict(getattr(getattr(run, "runtime_config", None), "parameters", None) or {}),
            "description": getattr(run, "description", None)}


def recurring_runs_named(client: Any, name: str, *, experiment_id: str,
                         namespace: str | None = None) -> list[Any]:
    """Every recurring run of the experiment whose display name is `name`, all pages read."""
    found: list[Any] = []
    token, seen = "", set()
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, namespace=namespace,
                                          page_size=SCHEDULE_PAGE_SIZE, page_token=token)
        found.extend(r for r in (getattr(page, "recurring_runs", None) or []) if r.display_name == name)
        token = getattr(page, "next_page_token", None) or ""
        if not token:
            return found
        if token in seen:
            raise PipelineError(f"list_recurring_runs (experiment {experiment_id}): the server returned "
                                f"page token {token!r} twice")
        seen.add(token)


def schedule(client: Any, package: str | Path, arguments: Mapping[str, Any], *, cron: str, experiment: str,
             max_concurrency: int, job_name: str | None = None, namespace: str | None = None,
             cache: bool = True, replace: bool = False) -> dict[str, Any]:
    """Create a recurring run from a 6-field cron, once: no catch-up of missed runs.

    Idempotent by name within the experiment: a recurring run of the same name with the same cron,
    arguments, max_concurrency, IR and caching is returned as is (`action: unchanged`), so a second
    call (a Helm upgrade, a re-run script) does not add a second weekly retraining. One with other
    settings is refused with ScheduleConflictError unless `replace`: then the new one is created
    first and the old one(s) deleted after, so a failed create leaves the old schedule running.
    The cron is validated before anything is sent, so a typo never reaches the cluster.
    """
    expr = validate_cron(cron)
    if max_concurrency < 1:
        raise ValueError(f"pipeline.max_concurrency: must be >= 1, got {max_concurrency}")
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found (run `affectflow pipeline compile`)")
    exp = client.create_experiment(name=experiment, namespace=namespace)
    name = job_name or f"{PIPELINE_NAME}-schedule"
    description = SCHEDULE_DESCRIPTION.format(pipeline=PIPELINE_NAME, digest=_ir_digest(package),
                                              caching="on" if cache else "off")
    wanted = {"cron": expr, "max_concurrency": max_concurrency, "params": dict(arguments),
              "description": description}
    existing = recurring_runs_named(client, name, experiment_id=exp.experiment_id, namespace=namespace)
    result = {"job_name": name, "experiment": experiment, "cron": expr, "max_concurrency": max_concurrency,
              "no_catchup": True, "next": next_fire_times(expr)}
    ids = [r.recurring_run_id for r in existing]
    if len(existing) == 1 and _schedule_settings(existing[0]) == wanted:
        return {"action": "unchanged", "recurring_run_id": ids[0], **result,
                "mode": getattr(existing[0], "mode", None)}
    if existing and not replace:
        raise ScheduleConflictError(_conflict_message(name, experiment, existing, wanted))
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, description=description, cron_expression=expr,
        max_concurrency=max_concurrency, no_catchup=True, params=dict(arguments),
        pipeline_package_path=str(package), enabled=True, enable_caching=cache)
    for old in ids:
        try:
            client.delete_recurring_run(old)
        except Exception as e:  # kfp_server_api ApiException, connection errors: say what is left
            raise PipelineError(f"created recurring run {job.recurring_run_id} ({name!r}) but could not delete "
                                f"the old one {old}: {e}; delete it in the Kubeflow UI or with "
                                "kfp.Client().delete_recurring_run") from None
    return {"action": "replaced" if ids else "created", "recurring_run_id": job.recurring_run_id, **result,
            **({"replaced": ids} if ids else {})}


def _conflict_message(name: str, experiment: str, existing: list[Any], wanted: dict[str, Any]) -> str:
    ids = ", ".join(r.recurring_run_id for r in existing)
    if len(existing) > 1:
        return (f"{len(existing)} recurring runs named {name!r} in experiment {experiment!r} ({ids}): "
                "pass --replace to delete them all and create one")
    have = _schedule_settings(existing[0])
    what = "; ".join(f"{k}: {have[k]!r} -> {wanted[k]!r}" for k in wanted if have[k] != wanted[k])
    return (f"recurring run {ids} ({name!r}, experiment {experiment!r}) exists with other settings "
            f"({what}): pass --replace to delete it and create the new one")
