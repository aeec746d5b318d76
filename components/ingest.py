"""ingest: corpora -> manifest.parquet with speaker-independent splits."""

from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.base import component


@component("cpu")
def ingest(config: str, data_version: str, manifest: Output[Dataset], summary: Output[Metrics],
           report: Output[Markdown]) -> None:
    """The ingest stage into the `manifest` folder (manifest.parquet, summary.json).

    `data_version` is not read: it is part of the task's inputs so that the cached manifest is
    reused only while the audio is unchanged.
    """
    from affectflow.orchestration import kfp_io

    res = kfp_io.run_task("ingest", config, {}, manifest.path)
    manifest.metadata["data_version"] = data_version
    manifest.metadata["file"] = res.manifest.name
    kfp_io.log_metrics(summary, res.summary)
    kfp_io.write_markdown(report, kfp_io.summary_markdown("Ingest", res.summary))
