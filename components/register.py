"""register and promote: MLflow registry version as `challenger`; `champion` moves only via promote."""

from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.base import component


@component("cpu")
def register(config: str, model: Input[Model], evaluation: Input[Artifact], result: Output[Artifact],
             report: Output[Markdown]) -> bool:
    """The register stage with promotion left to the DAG: registers a new version as `challenger`,
    runs the gate against `champion` (decision and reason in `result`/result.json) and returns
    whether the `promote` task should run: gate passed and registry.auto_promote.

    A single return value on purpose: kfp.local resolves `dsl.If` on a task's `Output` but not on a
    named output of a NamedTuple."""
    from affectflow.orchestration import kfp_io

    res = kfp_io.register_task(config, kfp_io.model_dir(model), evaluation.path, result.path)
    result.metadata.update(version=str(res["version"]), gate_passed=bool(res["gate"]["passed"]))
    kfp_io.write_markdown(report, kfp_io.registry_markdown("Registration", res))
    return bool(res["gate"]["passed"]) and bool(res["auto_promote"])


@component("cpu")
def promote(config: str, registration: Input[Artifact], run_name: str, result: Output[Artifact],
            report: Output[Markdown]) -> str:
    """Move `champion` to the version `register` added (its gate passed); returns the champion
    version afterwards."""
    from affectflow.orchestration import kfp_io

    res = kfp_io.promote_task(config, registration.path, run_name, result.path)
    kfp_io.write_markdown(report, kfp_io.registry_markdown("Promotion", res))
    return str(res["champion"])
