"""register and promote: MLflow registry version as `challenger`; `champion` moves only via promote."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.base import component


@component("cpu")
def register(params: Input[Artifact], model: Input[Model], evaluation: Input[Artifact], result: Output[Artifact],
             report: Output[Markdown]) -> NamedTuple("Outputs", [("version", str), ("gate_passed", bool),
                                                              ("promote", bool)]):
    """affectflow.registry.register with promotion left to the DAG: registers a new version as
    `challenger`, runs the gate against `champion` and says whether the `promote` task should run
    (gate passed and registry.auto_promote)."""
    from pathlib import Path

    from affectflow import kfp_io, registry

    p = kfp_io.read_params(params.path)
    auto_promote = p.registry.auto_promote
    p.registry.auto_promote = False  # the DAG's `promote` task moves champion, visibly
    res = registry.register(p, kfp_io.model_dir(model), Path(evaluation.path) / "metrics.json", result.path)
    passed = bool(res["gate"]["passed"])
    kfp_io.write_markdown(report, kfp_io.registry_markdown("Registration", res))
    return (str(res["version"]), passed, passed and auto_promote)


@component("cpu")
def promote(params: Input[Artifact], version: str, run_name: str, result: Output[Artifact],
            report: Output[Markdown]) -> str:
    """affectflow.registry.promote: move `champion` to the version that passed the gate; returns
    the champion version afterwards."""
    from pathlib import Path

    from affectflow import kfp_io, registry

    p = kfp_io.read_params(params.path)
    res = registry.promote(p, version, reason=f"pipeline run {run_name}")
    kfp_io.write_result(Path(result.path) / "result.json", res)
    kfp_io.write_markdown(report, kfp_io.registry_markdown("Promotion", res))
    return str(res["champion"])
