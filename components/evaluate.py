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

    from affectflow.orchestration import kfp_io

    res = kfp_io.run_task("evaluate", config, {"model": kfp_io.model_dir(model),
                                               "manifest": Path(manifest.path) / "manifest.parquet",
                                               "features": store.path}, evaluation.path).metrics
    kfp_io.log_metrics(metrics, kfp_io.headline_metrics(res))
    classes, matrix = kfp_io.confusion_of(res)
    kfp_io.log_confusion(confusion, classes, matrix)
    text = kfp_io.report_text(evaluation.path, fallback=kfp_io.summary_markdown("Evaluation", res))
    kfp_io.write_html(report, "Evaluation", text, evaluation.path, kfp_io.pngs(evaluation.path))
    return kfp_io.point(res["uar"])
