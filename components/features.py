"""features: log-mel and eGeMAPS into the content-addressed feature store."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.base import component


@component("cpu")
def features(config: str, manifest: Input[Dataset], store: Output[Dataset], summary: Output[Metrics],
             report: Output[Markdown]) -> None:
    """The features stage into the `store` folder (index.parquet + arrays)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io

    res = kfp_io.run_task("features", config, {"manifest": Path(manifest.path) / "manifest.parquet"}, store.path)
    kfp_io.log_metrics(summary, res.summary)
    kfp_io.write_markdown(report, kfp_io.summary_markdown("Features", res.summary))
