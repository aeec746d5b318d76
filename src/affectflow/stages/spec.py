"""What a stage is, as data: the shape every stage module follows and the row that declares it.

A stage module exposes `run(params, inputs, out_dir, **options) -> StageResult`: `inputs` maps
artifact names (`affectflow.contracts.workdir.ARTIFACTS`) to paths, `out_dir` is the folder it
writes (atomically), `options` (keyword-only, with defaults) are what a caller may add that is not
a setting (the register stage's `data_version`), and the result carries a JSON-able `summary`. Its `StageSpec` row in `affectflow.stages.STAGES`
says which params sections it reads, which artifacts it needs, whether it wants a GPU and which
switch turns it off. The CLI, `affectflow step` (DVC's commands), dvc.yaml, the Kubeflow
components' configuration hand-off and the DAG checks all read that one table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Inputs = Mapping[str, Path]
"""Artifact name -> path; optional artifacts that are absent are simply not in the mapping."""


class StageResult(Protocol):
    """What every stage returns."""

    out_dir: Path
    summary: dict[str, Any]


@dataclass
class StageOutput:
    """A `StageResult` that is just that: the folder written and its summary. A stage whose readers
    want a file by name subclasses it with a property (ingest's `manifest`, features' `index`)."""

    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@dataclass(kw_only=True)
class ReportedOutput(StageOutput):
    """The output of a stage that reports on what it made (augment, pretrain): `report.json` and
    `report.md` in its folder, and the MLflow run it logged them to."""

    mlflow_run_id: str | None = None

    @property
    def report_json(self) -> Path:
        return self.out_dir / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.out_dir / REPORT_MD


class StageError(RuntimeError):
    """A stage cannot run with what it was given; the message names the input or the setting."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of the training DAG."""

    name: str
    module: str
    """Module with `run(params, inputs, out_dir)` (imported on first use: the CLI starts fast)."""
    summary: str
    """One line: what it does (CLI help, docs)."""
    sections: tuple[str, ...]
    """params.yaml sections it reads: all it is handed in a pipeline task (hence its cache key)
    and its DVC `params:`. A section it reads but is not handed would silently keep its defaults;
    tests/unit/test_stages.py checks the module's code against this list."""
    output: str
    """Its output folder under the workdir (`affectflow.contracts.workdir.ARTIFACTS` names the
    artifacts inside it)."""
    inputs: tuple[str, ...] = ()
    """Artifacts it needs."""
    optional: tuple[str, ...] = ()
    """Artifacts it uses when they exist (a switched-off branch leaves a SKIPPED placeholder)."""
    gpu: bool = False
    """Runs on the GPU image / a GPU node in the cluster."""
    switch: str | None = None
    """Dotted bool setting that turns the stage off (it then leaves a SKIPPED placeholder)."""
    extra_deps: tuple[str, ...] = field(default_factory=tuple)
    """Non-code dependencies (DVC syntax, e.g. `${paths.data_root}`) whose change must re-run it."""
    outs: tuple[str, ...] = ("",)
    """What DVC caches of its output folder ("" = the whole folder)."""
    metrics: tuple[str, ...] = ()
    """Files in its output folder that DVC shows as metrics (not cached)."""
    plots: tuple[str, ...] = ()
    """PNGs in its output folder that DVC shows as plots (not cached)."""
    reads_features: tuple[str, ...] = ()
    """Dotted settings naming what it reads from the feature store: a feature kind (`augment.feature`)
    or a model (`train.model`: that model's kind, `models.ARCHS`). When it is enabled, the features
    stage computes these (`affectflow.stages.runner.feature_kinds`)."""
    derived_params: tuple[str, ...] = ()
    """Dotted settings outside its sections that its handed settings are derived from (DVC
    `params:` too, so changing them re-runs it): the features stage's kinds follow train.model."""
    uses: tuple[str, ...] = ()
    """Other stages whose code it runs, reached through this table (`function`), never imported
    (stages do not import each other): the re-score scores the champion with evaluate's own code.
    Its sections include theirs; dvc.yaml lists their files among its deps."""

    @property
    def run(self) -> Callable[..., StageResult]:
        return importlib.import_module(self.module).run  # type: ignore[no-any-return]

    def function(self, name: str) -> Callable[..., Any]:
        """A function of this stage's module, for a stage that declares it `uses` this one."""
        return getattr(importlib.import_module(self.module), name)  # type: ignore[no-any-return]

    def enabled(self, params: Any) -> bool:
        if self.switch is None:
            return True
        section, key = self.switch.split(".")
        return bool(getattr(getattr(params, section), key))
