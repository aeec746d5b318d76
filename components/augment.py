"""augment: class-conditional GAN samples, scored and filtered; or a placeholder when switched off."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.base import component


@component("gpu")
def augment(config: str, manifest: Input[Dataset], store: Input[Dataset], synthetic: Output[Dataset],
            summary: Output[Metrics], report: Output[HTML]) -> None:
    """The augment stage into the `synthetic` folder (synthetic.npz, report, plots)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("augment", config, {"manifest": Path(manifest.path) / "manifest.parquet",
                                              "features": store.path}, synthetic.path)
    kfp_reports.log_metrics(summary, res.summary)
    text = kfp_reports.report_text(synthetic.path, fallback="# Augmentation\n")
    kfp_reports.write_html(report, "Augmentation", text, synthetic.path, kfp_reports.pngs(synthetic.path))


@component("cpu")
def skip_augment(synthetic: Output[Dataset]) -> None:
    """The augmentation-off branch: an empty synthetic set, so training uses real data only."""
    from affectflow.orchestration import kfp_io

    kfp_io.mark_skipped(synthetic, "augment.enabled is false")
