"""Kubernetes resources of the pipeline's tasks: the built-in table of requests, limits and
timeouts per task, `pipeline.resources` overrides on top, and Kubernetes quantity parsing.

The schema of an override (`TaskResources`: which fields, quantity syntax) is configuration
(`affectflow.config`); which tasks exist and what they get by default is the DAG's business, here.
"""

from __future__ import annotations

import re

from affectflow.config import ConfigError, PipelineConfig, TaskResources

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def cpu_cores(q: str) -> float:
    """A Kubernetes CPU quantity ("500m", "2", "1.5") in cores."""
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory_bytes(q: str) -> float:
    """A Kubernetes memory quantity ("512Mi", "4Gi", "1G") in bytes."""
    m = re.match(r"^([\d.]+)([A-Za-z]*)$", q)
    assert m is not None
    return float(m.group(1)) * _UNITS[m.group(2)]


def _res(cpu: tuple[str, str], memory: tuple[str, str], hours: float = 1.0) -> TaskResources:
    return TaskResources(cpu_request=cpu[0], cpu_limit=cpu[1], memory_request=memory[0], memory_limit=memory[1],
                         timeout_s=int(hours * 3600))


_SMALL = _res(("250m", "1"), ("512Mi", "2Gi"))
DEFAULT_TASK_RESOURCES: dict[str, TaskResources] = {
    "resolve-params": _SMALL, "skip-augment": _SMALL, "skip-pretrain": _SMALL, "register": _SMALL,
    "promote": _SMALL, "record-run-status": _SMALL, "data-stamp": _SMALL,
    "ingest": _res(("1", "2"), ("1Gi", "4Gi"), hours=6),
    "validate": _res(("500m", "2"), ("1Gi", "4Gi"), hours=4),
    "validate-features": _res(("500m", "2"), ("1Gi", "4Gi"), hours=4),
    "plan-features": _SMALL,
    "features": _res(("2", "4"), ("4Gi", "8Gi"), hours=12),  # one task per shard, in parallel (ParallelFor)
    "gather-features": _res(("1", "2"), ("2Gi", "8Gi"), hours=4),  # the shards into one store with its index
    "augment": _res(("2", "4"), ("4Gi", "16Gi"), hours=12),
    "pretrain": _res(("2", "4"), ("4Gi", "16Gi"), hours=12),
    "train": _res(("2", "4"), ("4Gi", "16Gi"), hours=24),
    "evaluate": _res(("1", "2"), ("2Gi", "8Gi"), hours=4),
    "rescore": _res(("1", "2"), ("2Gi", "8Gi"), hours=4),  # downloads the champion and scores a test set
}
"""Requests, limits and timeouts per pipeline task (by component name). Tasks that read audio or train get
room (log-mel extraction and GAN training are the OOM risks) and hours; bookkeeping tasks get little.
A task the table does not name (one added to the DAG later) gets `DEFAULT_TASK`."""
DEFAULT_TASK = _SMALL


def resources_for(cfg: PipelineConfig, task: str) -> TaskResources:
    """The task's requests and limits: its `pipeline.resources` entry over the built-in default; a
    request above its limit is an error naming the field."""
    base = DEFAULT_TASK_RESOURCES.get(task, DEFAULT_TASK).model_dump()
    given = cfg.resources.get(task)
    if given is not None:
        base.update({k: v for k, v in given.model_dump().items() if v is not None})
    out = TaskResources(**base)
    for kind, parse in (("cpu", cpu_cores), ("memory", memory_bytes)):
        req, lim = getattr(out, f"{kind}_request"), getattr(out, f"{kind}_limit")
        if req and lim and parse(req) > parse(lim):
            raise ConfigError(f"pipeline.resources.{task}.{kind}_request: {req} is above its limit {lim}")
    return out


def check_resources(cfg: PipelineConfig) -> None:
    """`pipeline.resources` names only tasks of the DAG, and no task's request is above its limit."""
    unknown = sorted(set(cfg.resources) - set(DEFAULT_TASK_RESOURCES))
    if unknown:
        raise ConfigError(f"pipeline.resources: unknown task(s) {unknown}; known: {sorted(DEFAULT_TASK_RESOURCES)}")
    for task in DEFAULT_TASK_RESOURCES:
        resources_for(cfg, task)
