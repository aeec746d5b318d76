"""train: the recognizer with Ray Train, optionally on a DANN encoder and synthetic samples."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.base import component


@component("gpu")
def train(config: str, manifest: Input[Dataset], store: Input[Dataset], synthetic: Input[Dataset],
          encoder: Input[Model], model: Output[Model], summary: Output[Metrics], report: Output[HTML]) -> None:
    """The train stage into the `model` folder (model/, curves.png, summary.json)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("train", config, {
        "manifest": Path(manifest.path) / "manifest.parquet", "features": store.path,
        "encoder": kfp_io.optional_input(encoder, "encoder"), "synthetic": kfp_io.optional_input(synthetic),
    }, model.path)
    model.metadata["model_dir"] = str(Path(res.model_dir).relative_to(model.path))
    kfp_reports.log_metrics(summary, res.summary)
    text = kfp_reports.summary_markdown("Training", res.summary)
    kfp_reports.write_html(report, "Training", text, model.path, kfp_reports.pngs(model.path))
