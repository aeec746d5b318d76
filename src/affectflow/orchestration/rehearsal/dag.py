"""Walk a compiled pipeline (KFP IR) the way KFP's driver does: every DAG in dependency order,
inputs resolved from the run arguments, the parent DAG and upstream outputs, trigger conditions
evaluated, nested DAGs (conditions, exit handlers) entered, their outputs picked by their
selectors (`dsl.OneOf`), and every container task handed to a launcher.

Pure bookkeeping: the launcher (`launcher.py`) runs the container. Semantics kept from KFP on
Argo: a task whose upstream failed or did not run is not run; `ALL_UPSTREAM_TASKS_COMPLETED`
(an exit task) runs anyway and sees its producer's final status; a false condition skips a
subtree, which counts as completed for what follows.
"""

from __future__ import annotations

import ast
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
             artifacts: Mapping[str, list[dict]]) -> Outcome:
        tasks = component["dag"]["tasks"]
        results: dict[str, Outcome] = {}
        for name in task_order(tasks):
            results[name] = self._task(name, tasks[name], params, artifacts, results)
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
              artifacts: Mapping[str, list[dict]], results: Mapping[str, Outcome]) -> Outcome:
        waits = upstream(task)
        exit_task = (task.get("triggerPolicy") or {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
        blocked = sorted(u for u in waits if results[u].state not in (SUCCEEDED, SKIPPED))
        if blocked and not exit_task:
            return self._record(name, Outcome(NOT_RUN, cause=f"upstream {', '.join(blocked)} did not succeed"))
        p, a = self._inputs(name, task, params, artifacts, results)
        condition = (task.get("triggerPolicy") or {}).get("condition")
        if condition and not evaluate_condition(condition, p):
            return self._record(name, Outcome(SKIPPED, cause=f"condition false: {condition}"))
        component = self.spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            return self._dag(component, p, a)
        label = component["executorLabel"]
        executor = self.spec["deploymentSpec"]["executors"][label]
        outcome = self.launch(ContainerTask(name=name, component=component, executor_label=label, executor=executor,
                                            parameters=p, artifacts=a))
        return self._record(name, outcome)

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
