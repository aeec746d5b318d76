"""The register tail's tasks (`affectflow.stages.register`): rescore -> register -> [promote], each
the task runner on its stage row; `champion` moves only in promote."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.base import component


@component("cpu")
def rescore(config: str, manifest: Input[Dataset], store: Input[Dataset], model: Input[Model],
            evaluation: Input[Artifact], rescore: Output[Artifact], report: Output[Markdown]) -> bool:
    """The rescore stage: when a champion exists and was scored on another test manifest (the
    corpus grew), its model folder fetched from MLflow and scored with the evaluate stage on this
    run's manifest and store; otherwise a plan that says why nothing was needed. Returns whether
    it re-scored."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    plan = kfp_io.run_task("rescore", config, {"manifest": Path(manifest.path) / "manifest.parquet",
                                               "features": store.path, "model": kfp_io.model_dir(model),
                                               "evaluation": evaluation.path}, rescore.path).plan
    rescore.metadata.update(needed=plan.needed, champion_version=plan.champion_version or "",
                            test_manifest_hash=plan.comparison_test_manifest_hash or "")
    kfp_reports.write_markdown(report, kfp_reports.report_text(
        rescore.path, fallback=f"# Champion re-score\n\n{plan.reason}\n"))
    return plan.needed


@component("cpu")
def register(config: str, model: Input[Model], evaluation: Input[Artifact], rescore: Input[Artifact],
             data_version: str, result: Output[Artifact], report: Output[Markdown]) -> bool:
    """The register stage: a new `challenger` version (an identical model is not registered twice),
    gated against `champion` on one test set (the re-score's when there is one; decision, reason
    and both scores in `result`/result.json and the report). Returns whether the promote task runs:
    the gate passed and the promote row is switched on (registry.auto_promote).

    A single return value on purpose: kfp.local resolves `dsl.If` on a task's `Output` but not on a
    named output of a NamedTuple."""
    from affectflow.orchestration import kfp_io, kfp_reports

    reg = kfp_io.run_task("register", config, {"model": kfp_io.model_dir(model), "evaluation": evaluation.path,
                                               "rescore": rescore.path}, result.path,
                          data_version=data_version or None).registration
    result.metadata.update(version=reg.version, gate_passed=reg.gate.passed, data_version=data_version)
    kfp_reports.write_markdown(report, kfp_reports.registry_markdown("Registration", reg.to_json()))
    return reg.gate.passed and kfp_io.stage_enabled("promote", config)


@component("cpu")
def promote(config: str, registration: Input[Artifact], run_name: str, result: Output[Artifact],
            report: Output[Markdown]) -> str:
    """The promote stage: `champion` moves to the version `register` added (its gate passed);
    returns the champion version afterwards."""
    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("promote", config, {"registration": registration.path}, result.path,
                          reason=f"pipeline run {run_name}").promotion
    kfp_reports.write_markdown(report, kfp_reports.registry_markdown("Promotion", res.to_json()))
    return str(res.champion)
