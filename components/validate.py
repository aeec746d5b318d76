"""validate: the Great Expectations data gate, on the manifest (before features) and on the
feature store (after features, before anything trains); a failed gate fails the task and the run."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components.base import component


@component("cpu")
def validate(config: str, manifest: Input[Dataset], gate: Output[Artifact], summary: Output[Metrics],
             report: Output[Markdown]) -> bool:
    """The manifest checks; the report is the task's Markdown output."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("validate", config, {"manifest": Path(manifest.path) / "manifest.parquet"}, gate.path)
    return kfp_reports.gate_outcome(res, summary, report)


@component("cpu")
def validate_features(config: str, manifest: Input[Dataset], store: Input[Dataset], gate: Output[Artifact],
                      summary: Output[Metrics], report: Output[Markdown]) -> bool:
    """The manifest checks plus the feature checks (every clip has every kind, arrays finite, right shapes)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("validate", config, {"manifest": Path(manifest.path) / "manifest.parquet",
                                               "features": store.path}, gate.path)
    return kfp_reports.gate_outcome(res, summary, report)
