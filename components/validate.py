"""validate: the Great Expectations data gate; a failed gate fails the task (and the run)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components.base import component


@component("cpu")
def validate(config: str, manifest: Input[Dataset], gate: Output[Artifact], summary: Output[Metrics],
             report: Output[Markdown]) -> bool:
    """affectflow.stages.validate.validate on the manifest; the report is the task's Markdown output."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io
    from affectflow.stages.validate import validate as run_stage

    params = kfp_io.stage_params(config, "validate")
    res = run_stage(params, Path(manifest.path) / "manifest.parquet", gate.path)
    kfp_io.log_metrics(summary, res.summary)
    kfp_io.write_markdown(report, Path(res.report_md).read_text())
    if not res.passed:
        raise RuntimeError(f"validation gate failed; report: {res.report_md}\n{Path(res.report_md).read_text()}")
    return res.passed
