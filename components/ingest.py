"""data-stamp and ingest: what data the run sees; corpora -> manifest.parquet with speaker-independent splits."""

from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.base import component


@component("cpu")
def data_stamp(config: str, data_version: str) -> str:
    """A stamp of the corpus roots as they are now (never cached): new, changed or removed files
    (or objects under an s3:// prefix) give a new stamp, so the cached ingest is reused only while
    the data is unchanged. `data_version` (a DVC revision, a label) is put in front when given."""
    from affectflow.orchestration import kfp_io

    return kfp_io.data_stamp_task(config, data_version)


@component("cpu")
def ingest(config: str, data_version: str, manifest: Output[Dataset], summary: Output[Metrics],
           report: Output[Markdown]) -> None:
    """The ingest stage into the `manifest` folder (manifest.parquet, summary.json).

    `data_version` (the data stamp) is not read: it is part of the task's inputs so that the cached
    manifest is reused only while the data is unchanged. It and the manifest's content hash are
    recorded in the artifact's metadata: which data this run saw.
    """
    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.run_task("ingest", config, {}, manifest.path)
    manifest.metadata["data_version"] = data_version
    manifest.metadata["manifest_hash"] = str(res.summary.get("manifest_hash", ""))
    manifest.metadata["clips"] = int(res.summary.get("clips", 0))
    manifest.metadata["file"] = res.manifest.name
    kfp_reports.log_metrics(summary, res.summary)
    kfp_reports.write_markdown(report, kfp_reports.summary_markdown("Ingest", res.summary))
