"""Walk a compiled pipeline (KFP IR) the way KFP's driver does: every DAG in dependency order,
inputs resolved from the run arguments, the parent DAG and upstream outputs, trigger conditions
evaluated, nested DAGs (conditions, exit handlers) entered, their outputs picked by their
selectors (`dsl.OneOf`), `dsl.ParallelFor` loops expanded into one iteration per item (their
outputs collected into lists, `dsl.Collected`), and every container task handed to a launcher.

Pure bookkeeping: the launcher (`launcher.py`) runs the container. Semantics kept from KFP on
Argo: a task whose upstream failed or did not run is not run; `ALL_UPSTREAM_TASKS_COMPLETED`
(an exit task) runs anyway and sees its producer's final status; a false condition skips a
subtree, which counts as completed for what follows. A loop (a task with a `parameterIterator`,
after backend/src/v2/driver/dag.go) iterates over its items (an input parameter's list, or the
`raw` JSON list), one run of its DAG per item with the item as `itemInput`; iterations run one
after another (the cluster runs up to `iteratorPolicy.parallelismLimit` at once), each container
task named `<task>.<index>` (a dot never occurs in a compiled task name); the loop fails when an
iteration fails, and with no items it is skipped with every collected output an empty list.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from affectflow.orchestration.ir import PipelineError

SUCCEEDED, FAILED, SKIPPED, NOT_RUN = "SUCCEEDED", "FAILED", "SKIPPED", "NOT_RUN"


@dataclass(frozen=True)
class ContainerTask:
    """A container task as its launcher needs it: name, component and executor specs, inputs."""

    name: str
    component: Mapping[str, Any]
    executor_label: str
    executor: Mapping[str, Any]
    parameters: Mapping[str, Any]
    artifacts: Mapping[str, list[dict[str, Any]]]


@dataclass
class Outcome:
    """A task's (or DAG's) end: state, output parameters and artifacts, one-line cause."""

    state: str
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cause: str = ""


Launch = Callable[[ContainerTask], Outcome]


def task_order(tasks: Mapping[str, Any]) -> list[str]:
    """Dependency order of one DAG's tasks (dependentTasks and every producer an input names);
    ties broken by name so the order is deterministic."""
    deps = {name: upstream(t) & set(tasks) for name, t in tasks.items()}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in done and deps[n] <= done)
        if not ready:
            raise PipelineError(f"cycle among tasks {sorted(set(tasks) - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


def upstream(task: Mapping[str, Any]) -> set[str]:
    """Every task this one waits for."""
    out = set(task.get("dependentTasks") or [])
    inputs = task.get("inputs") or {}
    for spec in (inputs.get("parameters") or {}).values():
        for key in ("taskOutputParameter", "taskFinalStatus"):
            if key in spec:
                out.add(spec[key]["producerTask"])
    for spec in (inputs.get("artifacts") or {}).values():
        if "taskOutputArtifact" in spec:
            out.add(spec["taskOutputArtifact"]["producerTask"])
    return out


_PARAM = re.compile(r"inputs\.parameter_values\['([^']+)'\]")


def evaluate_condition(expr: str, parameters: Mapping[str, Any]) -> bool:
    """A trigger condition as KFP compiles it (a CEL subset: ==, !=, <, >, &&, ||, !, int(), double())."""
    def value(m: re.Match) -> str:
        if m.group(1) not in parameters:
            raise PipelineError(f"condition {expr!r} names input {m.group(1)!r}, which the task does not have")
        return repr(parameters[m.group(1)])
    py = _PARAM.sub(value, expr)
    py = re.sub(r"!(?!=)", " not ", py).replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", py)))
    py = py.replace("double(", "float(")
    tree = ast.parse(py.strip(), mode="eval")
    allowed = (ast.Expression, ast.BoolOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.And, ast.Or, ast.Not,
               ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Call, ast.Name, ast.Load, ast.List,
               ast.Dict, ast.USub)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (isinstance(node, ast.Name) and node.id not in ("int", "float", "str")):
            raise PipelineError(f"condition {expr!r}: unsupported expression ({type(node).__name__})")
    return bool(eval(compile(tree, "<condition>", "eval"), {"__builtins__": {}}, {"int": int, "float": float,
                                                                                 "str": str}))


def loop_items(name: str, iterator: Mapping[str, Any], params: Mapping[str, Any]) -> list[Any]:
    """The items a `parameterIterator` iterates over, as KFP's driver reads them: the named input
    parameter's list (a JSON string of one is parsed) or the compiled-in `raw` JSON list."""
    spec = iterator.get("items") or {}
    if "inputParameter" in spec:
        if spec["inputParameter"] not in params:
            raise PipelineError(f"{name}: loop items input {spec['inputParameter']!r} has no value")
        value = params[spec["inputParameter"]]
    elif "raw" in spec:
        value = spec["raw"]
    else:
        raise PipelineError(f"{name}: parameterIterator without items (inputParameter or raw)")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{name}: loop items {value[:80]!r} are not a JSON list ({e})") from e
    if not isinstance(value, list):
        raise PipelineError(f"{name}: loop items must be a list, got {type(value).__name__}")
    return value


class Walker:
    """Runs a pipeline spec (the IR's first document) with `launch` for each container task."""

    def __init__(self, spec: Mapping[str, Any], launch: Launch, *, job_name: str,
                 on_task: Callable[[str, Outcome], None] | None = None):
        self.spec, self.launch, self.job_name = spec, launch, job_name
        self.on_task = on_task or (lambda name, outcome: None)
        self.records: dict[str, Outcome] = {}

    def run(self, arguments: Mapping[str, Any]) -> Outcome:
        root = self.spec["root"]
        params: dict[str, Any] = {}
        for name, d in (root.get("inputDefinitions", {}).get("parameters") or {}).items():
            if name in arguments:
                params[name] = arguments[name]
            elif "defaultValue" in d:
                params[name] = d["defaultValue"]
            elif not d.get("isOptional"):
                raise PipelineError(f"pipeline input {name!r} has no value and no default")
        unknown = set(arguments) - set(params)
        if unknown:
            raise PipelineError(f"unknown pipeline arguments {sorted(unknown)}")
        return self._dag(root, params, {})

    def _dag(self, component: Mapping[str, Any], params: Mapping[str, Any],
             artifacts: Mapping[str, list[dict]], suffix: str = "") -> Outcome:
        """One DAG; `suffix` (`.<index>` per enclosing loop iteration) keeps iteration task names apart."""
        tasks = component["dag"]["tasks"]
        results: dict[str, Outcome] = {}
        for name in task_order(tasks):
            results[name] = self._task(name, tasks[name], params, artifacts, results, suffix)
        state = SUCCEEDED if all(r.state in (SUCCEEDED, SKIPPED) for r in results.values()) else FAILED
        out = Outcome(state, cause=next((r.cause for r in results.values() if r.state == FAILED), ""))
        outputs = component["dag"].get("outputs") or {}
        for key, spec in (outputs.get("artifacts") or {}).items():
            for sel in spec.get("artifactSelectors") or []:
                got = results.get(sel["producerSubtask"])
                if got and got.state == SUCCEEDED and sel["outputArtifactKey"] in got.artifacts:
                    out.artifacts[key] = got.artifacts[sel["outputArtifactKey"]]
                    break
        for key, spec in (outputs.get("parameters") or {}).items():
            sels = ([spec["valueFromParameter"]] if "valueFromParameter" in spec
                    else (spec.get("valueFromOneof") or {}).get("parameterSelectors") or [])
            for sel in sels:
                got = results.get(sel["producerSubtask"])
                if got and got.state == SUCCEEDED and sel["outputParameterKey"] in got.parameters:
                    out.parameters[key] = got.parameters[sel["outputParameterKey"]]
                    break
        return out

    def _task(self, name: str, task: Mapping[str, Any], params: Mapping[str, Any],
              artifacts: Mapping[str, list[dict]], results: Mapping[str, Outcome], suffix: str = "") -> Outcome:
        waits = upstream(task)
        exit_task = (task.get("triggerPolicy") or {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
        blocked = sorted(u for u in waits if results[u].state not in (SUCCEEDED, SKIPPED))
        if blocked and not exit_task:
            return self._record(name + suffix,
                                Outcome(NOT_RUN, cause=f"upstream {', '.join(blocked)} did not succeed"))
        p, a = self._inputs(name, task, params, artifacts, results)
        condition = (task.get("triggerPolicy") or {}).get("condition")
        if condition and not evaluate_condition(condition, p):
            return self._record(name + suffix, Outcome(SKIPPED, cause=f"condition false: {condition}"))
        component = self.spec["components"][task["componentRef"]["name"]]
        if "parameterIterator" in task:
            return self._loop(name, task, component, p, a, suffix)
        if "artifactIterator" in task:
            raise PipelineError(f"{name}: artifactIterator is not implemented (nor is it in KFP's driver)")
        if "dag" in component:
            return self._dag(component, p, a, suffix)
        label = component["executorLabel"]
        executor = self.spec["deploymentSpec"]["executors"][label]
        outcome = self.launch(ContainerTask(name=name + suffix, component=component, executor_label=label,
                                            executor=executor, parameters=p, artifacts=a))
        return self._record(name + suffix, outcome)

    def _loop(self, name: str, task: Mapping[str, Any], component: Mapping[str, Any], params: Mapping[str, Any],
              artifacts: Mapping[str, list[dict]], suffix: str) -> Outcome:
        """A `dsl.ParallelFor`: its DAG once per item, every output collected across iterations in order."""
        items = loop_items(name, task["parameterIterator"], params)
        item_input = task["parameterIterator"]["itemInput"]
        runs = [self._dag(component, {**params, item_input: item}, artifacts, f"{suffix}.{i}")
                for i, item in enumerate(items)]
        outputs = component["dag"].get("outputs") or {}
        if not runs:
            return self._record(name + suffix, Outcome(
                SKIPPED, parameters={k: [] for k in outputs.get("parameters") or {}},
                artifacts={k: [] for k in outputs.get("artifacts") or {}}, cause="no items to iterate over"))
        failed = [i for i, r in enumerate(runs) if r.state != SUCCEEDED]
        out = Outcome(FAILED if failed else SUCCEEDED,
                      cause=f"iteration {failed[0]}: {runs[failed[0]].cause}" if failed else "")
        for key in outputs.get("artifacts") or {}:
            out.artifacts[key] = [art for r in runs for art in r.artifacts.get(key, [])]
        for key in outputs.get("parameters") or {}:
            out.parameters[key] = [r.parameters[key] for r in runs if key in r.parameters]
        return out

    def _record(self, name: str, outcome: Outcome) -> Outcome:
        self.records[name] = outcome
        self.on_task(name, outcome)
        return outcome

    def _inputs(self, name: str, task: Mapping[str, Any], params: Mapping[str, Any],
                artifacts: Mapping[str, list[dict]], results: Mapping[str, Outcome]) -> tuple[dict, dict]:
        inputs = task.get("inputs") or {}
        p: dict[str, Any] = {}
        for key, spec in (inputs.get("parameters") or {}).items():
            if "componentInputParameter" in spec:
                if spec["componentInputParameter"] in params:
                    p[key] = params[spec["componentInputParameter"]]
            elif "taskOutputParameter" in spec:
                ref = spec["taskOutputParameter"]
                got = results[ref["producerTask"]]
                if ref["outputParameterKey"] not in got.parameters:
                    raise PipelineError(f"{name}: input {key!r} wants {ref['producerTask']}'s output "
                                        f"{ref['outputParameterKey']!r}, which it did not produce")
                p[key] = got.parameters[ref["outputParameterKey"]]
            elif "runtimeValue" in spec:
                p[key] = spec["runtimeValue"]["constant"]
            elif "taskFinalStatus" in spec:
                producer = spec["taskFinalStatus"]["producerTask"]
                got = results[producer]
                p[key] = {"state": SUCCEEDED if got.state in (SUCCEEDED, SKIPPED) else FAILED,
                          "pipelineJobResourceName": self.job_name, "pipelineTaskName": producer,
                          "error": {} if got.state in (SUCCEEDED, SKIPPED) else {"code": 2, "message": got.cause}}
            else:
                raise PipelineError(f"{name}: input parameter {key!r} has an unsupported source {sorted(spec)}")
        a: dict[str, list[dict]] = {}
        for key, spec in (inputs.get("artifacts") or {}).items():
            if "componentInputArtifact" in spec:
                if spec["componentInputArtifact"] in artifacts:
                    a[key] = artifacts[spec["componentInputArtifact"]]
            elif "taskOutputArtifact" in spec:
                ref = spec["taskOutputArtifact"]
                got = results[ref["producerTask"]]
                if ref["outputArtifactKey"] not in got.artifacts:
                    raise PipelineError(f"{name}: input artifact {key!r} wants {ref['producerTask']}'s output "
                                        f"{ref['outputArtifactKey']!r}, which it did not produce")
                a[key] = got.artifacts[ref["outputArtifactKey"]]
            else:
                raise PipelineError(f"{name}: input artifact {key!r} has an unsupported source {sorted(spec)}")
        return p, a
