"""rescore-champion, register and promote: the champion scored on this run's test manifest when it
has no scores there; an MLflow registry version as `challenger`; `champion` moves only via promote."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.base import component


@component("cpu")
def rescore_champion(evaluate_config: str, register_config: str, manifest: Input[Dataset], store: Input[Dataset],
                     model: Input[Model], evaluation: Input[Artifact], rescore: Output[Artifact],
                     report: Output[Markdown]) -> bool:
    """When a champion exists and was scored on another test manifest (the corpus grew): fetch its
    model folder from MLflow and score it with the evaluate stage on this run's manifest and store
    (test speakers it trained on left out, the challenger then scored on that set too). Otherwise a
    plan that says why nothing was needed. Returns whether it re-scored."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io

    plan = kfp_io.rescore_task(evaluate_config, register_config, Path(manifest.path) / "manifest.parquet",
                               store.path, kfp_io.model_dir(model), evaluation.path, rescore.path)
    rescore.metadata.update(needed=bool(plan["needed"]), champion_version=str(plan["champion_version"] or ""),
                            test_manifest_hash=str(plan["comparison_test_manifest_hash"] or ""))
    kfp_io.write_markdown(report, kfp_io.report_text(rescore.path, fallback=f"# Champion re-score\n\n{plan['reason']}\n"))
    return bool(plan["needed"])


@component("cpu")
def register(config: str, model: Input[Model], evaluation: Input[Artifact], rescore: Input[Artifact],
             data_version: str, result: Output[Artifact], report: Output[Markdown]) -> bool:
    """The register stage with promotion left to the DAG: registers a new version as `challenger`
    (an identical model is not registered twice), gates it against `champion` on one test set (the
    re-score's when there is one; decision, reason and both scores in `result`/result.json and the
    report) and returns whether the `promote` task should run: gate passed and registry.auto_promote.

    A single return value on purpose: kfp.local resolves `dsl.If` on a task's `Output` but not on a
    named output of a NamedTuple."""
    from affectflow.orchestration import kfp_io

    res = kfp_io.register_task(config, kfp_io.model_dir(model), evaluation.path, result.path, rescore=rescore.path,
                               data_version=data_version)
    result.metadata.update(version=str(res["version"]), gate_passed=bool(res["gate"]["passed"]),
                           data_version=data_version)
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
