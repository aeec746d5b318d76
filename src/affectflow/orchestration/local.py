"""Running the DAG embedded with `kfp.local` (SubprocessRunner: no container, this environment).

`run_local` takes a built pipeline (from `pipelines.train_pipeline.build_pipeline`) and its
run-form arguments, times every task, notes cache hits and returns (and writes) a run summary with
the evaluation metrics and the registry outcome.

The shim: kfp.local 2.17 resolves `dsl.OneOf` for parameters but raises on artifacts ("Expected 1
artifact in ArtifactSelectorSpec"), and hands a `dsl.ParallelFor` body the loop item in place of
every other task-output parameter (the features fan-out's `config`); the cluster backend does
neither. `_instrumented_kfp_local` applies the parameter rule (exactly one branch produced it) to
artifacts and keeps a loop body's other parameters, for the run only; it patches private kfp.local
functions, so it refuses any other kfp version (`KFP_LOCAL_VERSION`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.orchestration.ir import PIPELINE_NAME, PipelineError

KFP_LOCAL_VERSION = "2.17.0"
"""The kfp release whose kfp.local internals the shim patches (checked before every local run)."""


def check_kfp_version() -> None:
    import kfp

    if kfp.__version__ != KFP_LOCAL_VERSION:
        raise PipelineError(f"kfp {kfp.__version__} is installed; the kfp.local shim "
                            f"(affectflow.orchestration.local) is written for kfp {KFP_LOCAL_VERSION}: "
                            "install that version or re-check the shim")


@dataclass
class TaskRecord:
    status: str = "RUNNING"
    seconds: float = 0.0
    cached: bool = False
    attempts: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    cause: str = ""
    """A failed task's one-line cause, from its log (`FailureCause`); empty otherwise."""


_CAUSE_LINE = re.compile(r"^(?:error: .+|(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::.*)?))$")
"""A traceback's last line (`package.module.SomeError: message`) or the CLI's `error: ...` line."""


class FailureCause:
    """The last line of the running task's log that says why it failed: a local run's failure is
    otherwise only visible inside the task's traceback, scrolled away by the exit handler's log."""

    def __init__(self) -> None:
        self.last = ""

    def see(self, line: str) -> None:
        m = _CAUSE_LINE.match(line.strip())
        if m:
            self.last = m.group(1) or m.group(0)  # the exception's class name without its module


def _artifact_uri(value: Any) -> Any:
    if isinstance(value, list):
        return [_artifact_uri(v) for v in value]
    uri = getattr(value, "uri", None)
    return {"uri": uri, "metadata": dict(getattr(value, "metadata", {}) or {})} if uri else value


@contextlib.contextmanager
def _instrumented_kfp_local(tasks: dict[str, TaskRecord], cause: FailureCause) -> Iterator[None]:
    """Time each task, note cache hits, outputs and a failure's cause; let dsl.OneOf select artifacts."""
    from kfp.local import cache as cache_module
    from kfp.local.orchestrator import orchestrator_utils, task_executor, task_spec_utils

    utils = orchestrator_utils.OrchestratorUtils
    original_select = utils.__dict__["get_dag_output_artifacts"]
    original_iteration = task_spec_utils.create_parameter_loop_iteration_task_spec
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
        cause.last = ""
        start = time.perf_counter()
        outputs, status = original_exec(*args, **kwargs)
        if status.name == "FAILURE" and cause.last and not record.cause:
            record.cause = cause.last
        record.seconds += time.perf_counter() - start
        record.cached = bool(hits and hits[0])
        record.attempts += 1
        record.status = status.name
        record.outputs = {k: _artifact_uri(v) for k, v in (outputs or {}).items()}
        return outputs, status

    def loop_iteration(original_task_spec: Any, loop_item: Any, loop_task_name: str) -> Any:
        """kfp.local 2.17 replaces every task-output parameter of a ParallelFor body with the loop
        item (so `config` from resolve-params became the shard number); keep the ones that are not
        the loop's items, as the cluster backend does."""
        items = original_task_spec.parameter_iterator.items.input_parameter
        keep = {k: v for k, v in original_task_spec.inputs.parameters.items()
                if v.HasField("task_output_parameter") and k != items}
        spec = original_iteration(original_task_spec, loop_item, loop_task_name)
        for name, value in keep.items():
            spec.inputs.parameters[name].CopyFrom(value)
        return spec

    utils.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    task_spec_utils.create_parameter_loop_iteration_task_spec = loop_iteration
    task_executor.execute_single_task = execute_single_task
    cache_module.LocalCache.get = cache_get
    try:
        yield
    finally:
        utils.get_dag_output_artifacts = original_select
        task_spec_utils.create_parameter_loop_iteration_task_spec = original_iteration
        task_executor.execute_single_task = original_exec
        cache_module.LocalCache.get = original_get


_EXECUTOR_LINE = re.compile(r"^\[KFP Executor [^\]]* (INFO|DEBUG)\]: ")
_QUIET_KFP = ("Streamed logs", "outputs:", "has no outputs")
"""kfp.local's own INFO lines that a quiet run leaves out (task start and end stay)."""


class ExecutorLogFilter:
    """Drops the KFP executor's INFO lines from a task's streamed log — the executor-input JSON,
    "Loading component", library INFO chatter — and keeps everything else: the stage's progress
    lines, warnings, errors and tracebacks."""

    def __init__(self) -> None:
        self.in_json = False

    def keep(self, line: str) -> bool:
        if self.in_json:
            if line.rstrip("\n") == "}":
                self.in_json = False
            return False
        if _EXECUTOR_LINE.match(line):
            self.in_json = line.rstrip().endswith(":") and "executor_input" in line
            return False
        return True


@contextlib.contextmanager
def quiet_kfp_local(verbose: bool, cause: FailureCause | None = None) -> Iterator[None]:
    """Unless `verbose`: tasks' logs without the executor's JSON and INFO chatter, and kfp.local's
    per-task output listings left out (the run summary lists them). Every line goes to `cause`."""
    import subprocess

    from kfp.local import logging_utils, subprocess_task_handler

    original_run = subprocess_task_handler.run_local_subprocess
    original_line = logging_utils.print_horizontal_line

    def run_local_subprocess(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        env = {**os.environ, **env_vars} if env_vars else None
        keep = ExecutorLogFilter()
        with subprocess.Popen(full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                              env=env) as process:
            for line in iter(process.stdout.readline, "") if process.stdout else ():
                if cause is not None:
                    cause.see(line)
                if verbose or keep.keep(line):
                    print(line, end="")
            if verbose:
                print("\n")  # kfp.local's own separator after a task's log
            return process.wait()

    subprocess_task_handler.run_local_subprocess = run_local_subprocess
    if verbose:
        try:
            yield
        finally:
            subprocess_task_handler.run_local_subprocess = original_run
        return

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = str(record.getMessage())
            return not any(k in msg.splitlines()[0] for k in _QUIET_KFP) if msg else True

    quiet = Quiet()
    root = logging.getLogger()
    original_add = root.addHandler

    def add_handler(handler: logging.Handler) -> None:  # kfp.local installs its handler per task
        handler.addFilter(quiet)
        original_add(handler)

    logging_utils.print_horizontal_line = lambda: None
    root.addHandler = add_handler  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = original_run
        logging_utils.print_horizontal_line = original_line
        root.addHandler = original_add  # type: ignore[method-assign]


def local_root(params: Params) -> Path:
    """Where kfp.local keeps task outputs and its cache: <workdir>/kfp (local workdirs only)."""
    workdir = params.paths.workdir
    return Path("artifacts" if "://" in workdir else workdir) / "kfp"


def run_local(pipeline: Any, arguments: Mapping[str, Any], pipeline_root: str | Path, *,
              cache: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Run a built pipeline with kfp.local's SubprocessRunner in this environment.

    `arguments` are run-form values, exactly what a run submitted from the UI would send. Returns
    per-task status, seconds and cache hits, the evaluation metrics and the registry outcome (also
    written to `<pipeline_root>/last_run.json`). Raises PipelineError naming the failed task; the
    exit handler has recorded the failure by then.
    """
    from kfp import local

    from affectflow.storage import atomic_write_json

    check_kfp_version()
    root = Path(pipeline_root).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True, enable_caching=cache)
    tasks: dict[str, TaskRecord] = {}
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    error: str | None = None
    cause = FailureCause()
    with warnings.catch_warnings(), _instrumented_kfp_local(tasks, cause), quiet_kfp_local(verbose, cause):
        # The components name the project image; SubprocessRunner warns that it runs them in this
        # Python instead, which is the point of a local run.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Accelerators, display names: cluster settings kfp.local cannot apply, by design.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            pipeline(**dict(arguments))
        except RuntimeError as e:
            error = str(e)
    summary = _run_summary(tasks, arguments, root, started, time.perf_counter() - t0, error)
    atomic_write_json(root / "last_run.json", summary)
    if error:
        raise PipelineError(failure_line(tasks, root / "last_run.json"))
    return summary


def failure_line(tasks: dict[str, TaskRecord], summary_path: Path) -> str:
    """The run's last word: each failed task with its one-line cause (the tasks that ran in the
    failed one's place, like the exit handler's DAG, have none of their own and are left out)."""
    failed = [(n, r.cause) for n, r in tasks.items() if r.status == "FAILURE"]
    named = [f"{n}: {c}" for n, c in failed if c] or [n for n, _ in failed] or ["?"]
    return f"local pipeline run failed in task {'; task '.join(named)} (summary: {summary_path})"


def _read_artifact_json(record: TaskRecord | None, output: str, name: str = "") -> Any:
    if record is None or output not in record.outputs:
        return None
    uri = record.outputs[output]["uri"]
    path = Path(uri) / name if name else Path(uri)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_evaluation(record: TaskRecord | None) -> dict[str, Any] | None:
    """The evaluate task's metrics.json, read through its contract (None: no readable evaluation)."""
    from affectflow.contracts.evaluation import read_evaluation

    if record is None or "evaluation" not in record.outputs:
        return None
    try:
        return read_evaluation(Path(record.outputs["evaluation"]["uri"])).to_json()
    except (OSError, ValueError):
        return None


def _run_summary(tasks: dict[str, TaskRecord], args: Mapping[str, Any], root: Path, started: datetime,
                 wall: float, error: str | None) -> dict[str, Any]:
    register = _read_artifact_json(tasks.get("register"), "result", "result.json")
    promotion = _read_artifact_json(tasks.get("promote"), "result", "result.json")
    metrics = _read_artifact_json(tasks.get("evaluate"), "metrics")
    evaluation = _read_evaluation(tasks.get("evaluate"))
    features = _read_artifact_json(tasks.get("gather-features"), "store", "summary.json")
    return {
        "pipeline": PIPELINE_NAME, "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 2), "status": "FAILURE" if error else "SUCCESS", "error": error,
        "pipeline_root": str(root), "arguments": dict(args),
        "tasks": {n: {"status": r.status, "seconds": round(r.seconds, 2), "cached": r.cached,
                      "attempts": r.attempts, **({"cause": r.cause} if r.cause else {})} for n, r in tasks.items()},
        "metrics": metrics, "evaluation": evaluation, "register": register, "promotion": promotion,
        "features": features, "paths": _paths(tasks),
    }


def _paths(tasks: dict[str, TaskRecord]) -> dict[str, str]:
    """Where a person looks after the run: the evaluation report and plots, the model folder."""
    out: dict[str, str] = {}
    ev = tasks.get("evaluate")
    if ev is not None and "evaluation" in ev.outputs:
        folder = Path(ev.outputs["evaluation"]["uri"])
        out |= {"report": str(folder / "report.md"), "confusion": str(folder / "confusion.png")}
        if "report" in ev.outputs:
            out["report_html"] = str(ev.outputs["report"]["uri"])
    tr = tasks.get("train")
    if tr is not None and "model" in tr.outputs:
        art = tr.outputs["model"]
        folder = Path(art["uri"])
        out |= {"model": str(folder / (art.get("metadata") or {}).get("model_dir", "model")),
                "curves": str(folder / "curves.png")}
    return out


