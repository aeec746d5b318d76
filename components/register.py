"""register and promote: MLflow registry version as `challenger`; `champion` moves only via promote."""

from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.base import component


@component("cpu")
def register(params: Input[Artifact], model: Input[Model], evaluation: Input[Artifact], result: Output[Artifact],
             report: Output[Markdown]) -> bool:
    """affectflow.tracking.registry.register with promotion left to the DAG: registers a new version as
    `challenger`, runs the gate against `champion` (decision and reason in `result`/result.json)
    and returns whether the `promote` task should run: gate passed and registry.auto_promote.

    A single return value on purpose: kfp.local resolves `dsl.If` on a task's `Output` but not on a
    named output of a NamedTuple."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io
    from affectflow.tracking import registry

    p = kfp_io.read_params(params.path)
    auto_promote = p.registry.auto_promote
    p.registry.auto_promote = False  # the DAG's `promote` task moves champion, visibly
    res = registry.register(p, kfp_io.model_dir(model), Path(evaluation.path) / "metrics.json", result.path)
    result.metadata.update(version=str(res["version"]), gate_passed=bool(res["gate"]["passed"]))
    kfp_io.write_markdown(report, kfp_io.registry_markdown("Registration", res))
    return bool(res["gate"]["passed"]) and auto_promote


@component("cpu")
def promote(params: Input[Artifact], registration: Input[Artifact], run_name: str, result: Output[Artifact],
            report: Output[Markdown]) -> str:
    """affectflow.tracking.registry.promote: move `champion` to the version `register` added (its gate
    passed); returns the champion version afterwards."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io
    from affectflow.tracking import registry

    p = kfp_io.read_params(params.path)
    version = str(kfp_io.read_json(Path(registration.path) / "result.json")["version"])
    res = registry.promote(p, version, reason=f"pipeline run {run_name}")
    kfp_io.write_result(Path(result.path) / "result.json", res)
    kfp_io.write_markdown(report, kfp_io.registry_markdown("Promotion", res))
    return str(res["champion"])
