"""evaluate: UAR / WA / macro-F1 with bootstrap CIs and the confusion matrix on the test split."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.base import component


@component("cpu")
def evaluate(config: str, manifest: Input[Dataset], store: Input[Dataset], model: Input[Model],
             evaluation: Output[Artifact], metrics: Output[Metrics], confusion: Output[ClassificationMetrics],
             report: Output[HTML]) -> float:
    """The evaluate stage into the `evaluation` folder (metrics.json, confusion.png, report.md);
    returns the test UAR."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    ev = kfp_io.run_task("evaluate", config, {"model": kfp_io.model_dir(model),
                                              "manifest": Path(manifest.path) / "manifest.parquet",
                                              "features": store.path}, evaluation.path).evaluation
    kfp_reports.log_metrics(metrics, kfp_reports.evaluation_metrics(ev))
    kfp_reports.log_confusion(confusion, *kfp_reports.confusion_of(ev))
    text = kfp_reports.report_text(evaluation.path, fallback=kfp_reports.summary_markdown(
        "Evaluation", kfp_reports.evaluation_metrics(ev)))
    kfp_reports.write_html(report, "Evaluation", text, evaluation.path, kfp_reports.pngs(evaluation.path))
    return ev.test.uar
