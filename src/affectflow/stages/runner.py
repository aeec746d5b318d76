"""Run a stage in the workdir layout: what `affectflow <stage>` and `affectflow step <stage>`
(dvc.yaml's commands) do.

Inputs default to their place in the workdir (`affectflow.contracts.workdir`); an optional input
that is missing or a SKIPPED placeholder is left out. A switched-off stage (`StageSpec.switch`)
leaves the placeholder the Kubeflow DAG's else-branch leaves, so DVC, which has no conditional
stages, still sees its output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.workdir import ARTIFACTS, Workdir, optional_dir, write_skipped
from affectflow.stages import STAGES, StageError, StageResult, get
from affectflow.stages.frontend import with_available_frontend


@dataclass
class Skipped:
    out_dir: Path
    summary: dict[str, Any]


def workdir_inputs(params: Params, name: str, given: Mapping[str, Path | None] | None = None,
                   optional_defaults: bool = True) -> dict[str, Path]:
    """The stage's inputs: `given` paths first, else their workdir defaults (for an optional input
    only with `optional_defaults`)."""
    spec = get(name)
    wd = Workdir(params.workdir())
    given = {k: v for k, v in (given or {}).items() if v is not None}
    inputs: dict[str, Path] = {}
    for art in spec.inputs:
        inputs[art] = Path(given.get(art) or wd.artifact(art))
    for art in spec.optional:
        if art in given:
            inputs[art] = Path(given[art])
            continue
        if not optional_defaults:
            continue
        a = ARTIFACTS[art]
        found = optional_dir(wd.stage_dir(a.stage), a.inner)
        if found is not None and found.exists():
            inputs[art] = found
    return inputs


def run_stage(params: Params, name: str, inputs: Mapping[str, Path | None] | None = None,
              out_dir: Path | None = None, respect_switch: bool = True, optional_defaults: bool = True,
              **options: Any) -> StageResult:
    """Run stage `name` (switched-off stages leave a placeholder when `respect_switch`); `options`
    go to its `run` (keyword-only options that are not settings)."""
    spec = get(name)
    params = with_feature_kinds(params)  # the kinds the enabled stages read, as a pipeline task is handed them
    out = Path(out_dir) if out_dir else Workdir(params.workdir()).stage_dir(spec.output)
    if respect_switch and not spec.enabled(params):
        write_skipped(out, f"{spec.switch} is false")
        return Skipped(out, {"stage": name, "skipped": True, "out": str(out)})
    resolved = workdir_inputs(params, name, inputs, optional_defaults)
    missing = [k for k in spec.inputs if not resolved[k].exists()]
    if missing:
        where = ", ".join(f"{k} ({resolved[k]})" for k in missing)
        raise StageError(f"stage {name}: input {where} not found; run the stages before it first")
    return spec.run(params, resolved, out, **options)


def output_artifact(name: str) -> str | None:
    """The artifact a stage's output folder is (`contracts.workdir.ARTIFACTS`), if a later stage reads it."""
    folder = get(name).output
    return next((art for art, a in ARTIFACTS.items() if a.stage == folder and not a.inner), None)


def run_chain(params: Params, names: Sequence[str], inputs: Mapping[str, Path | None],
              out_dirs: Mapping[str, Path | None] | None = None,
              options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, StageResult]:
    """Run stages `names` in order, each one's output handed to the later ones as the artifact it is:
    how `affectflow register` runs the register tail (rescore -> register -> promote), as dvc.yaml's
    stages and the DAG's tasks do. Switches are respected; `out_dirs[name]` None = its workdir folder;
    an optional input comes from `inputs` or an earlier stage of the chain, never from the workdir."""
    given = {k: v for k, v in inputs.items() if v is not None}
    results: dict[str, StageResult] = {}
    for name in names:
        out = (out_dirs or {}).get(name)
        res = run_stage(params, name, given, out, optional_defaults=False, **(options or {}).get(name, {}))
        results[name] = res
        art = output_artifact(name)
        if art is not None and not isinstance(res, Skipped):
            given[art] = Path(res.out_dir)
    return results


def _setting(params: Params, dotted: str) -> str:
    section, key = dotted.split(".")
    return str(getattr(getattr(params, section), key))


def feature_kinds(params: Params) -> list[str]:
    """The `features.kinds` a run computes: what the enabled stages read (their `reads_features`:
    a kind, or a model's kind from `models.ARCHS`), then the extra kinds params.features.kinds
    lists, in a stable order."""
    from affectflow.features.keys import kind_spec
    from affectflow.models import ARCHS  # torch: only where the kinds are worked out

    kinds = []
    for spec in STAGES.values():
        if spec.enabled(params):
            for dotted in spec.reads_features:
                value = _setting(params, dotted)
                kinds.append(kind_spec(ARCHS[value].feature if value in ARCHS else value).setting)
    return list(dict.fromkeys([*kinds, *params.features.kinds]))


def with_feature_kinds(params: Params) -> Params:
    """params whose features.kinds is `feature_kinds(params)`: what the runner and the pipeline's
    resolve-params task hand every stage (the features stage computes them, validate checks them).
    A packaged Whisper front-end whose weights are not installed falls back here (`frontend`)."""
    params = with_available_frontend(params)
    f = params.features.model_copy(update={"kinds": feature_kinds(params)})
    return params.model_copy(update={"features": f})
