"""pretrain: DANN domain-adversarial encoder pretraining; or a placeholder when switched off."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.base import component


@component("gpu")
def pretrain(config: str, manifest: Input[Dataset], store: Input[Dataset], encoder: Output[Model],
             summary: Output[Metrics], report: Output[HTML]) -> None:
    """The pretrain stage into the `encoder` folder (encoder/ model folder, report, plots)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("pretrain", config, {"manifest": Path(manifest.path) / "manifest.parquet",
                                               "features": store.path}, encoder.path)
    kfp_reports.log_metrics(summary, res.summary)
    text = kfp_reports.report_text(encoder.path, fallback="# DANN pretraining\n")
    kfp_reports.write_html(report, "DANN pretraining", text, encoder.path, kfp_reports.pngs(encoder.path))


@component("cpu")
def skip_pretrain(encoder: Output[Model]) -> None:
    """The DANN-off branch: no pretrained encoder, so training starts from scratch."""
    from affectflow.orchestration import kfp_io

    kfp_io.mark_skipped(encoder, "pretrain.enabled is false")
