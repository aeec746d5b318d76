"""features: the kinds the enabled stages read, into the sharded content-addressed feature store,
fanned out over pods: `plan_features` counts the shards the manifest's new clips make, one
`features` task per shard (inside a `dsl.ParallelFor`) computes them, and `gather_features`
gathers the shards into the store (computing nothing that a shard task or `features.previous` holds)."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.base import component


@component("cpu")
def plan_features(config: str, manifest: Input[Dataset]) -> list[int]:
    """The shard numbers to fan out over (none when `features.previous` holds every clip)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io

    return kfp_io.feature_plan_task(config, Path(manifest.path) / "manifest.parquet")


@component("cpu")
def features(config: str, manifest: Input[Dataset], shard: int, part: Output[Dataset]) -> None:
    """One shard of the plan into the `part` folder (its shard files, no index)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io

    kfp_io.feature_shard_task(config, Path(manifest.path) / "manifest.parquet", shard, part.path)


@component("cpu")
def gather_features(config: str, manifest: Input[Dataset], parts: Input[list[Dataset]], store: Output[Dataset],
                    summary: Output[Metrics], report: Output[Markdown]) -> None:
    """The shard tasks' folders gathered into the `store` folder (index.parquet + shards)."""
    from pathlib import Path

    from affectflow.orchestration import kfp_io, kfp_reports

    res = kfp_io.features_gather_task(config, Path(manifest.path) / "manifest.parquet",
                                      [p.path for p in parts], store.path)
    kfp_reports.log_metrics(summary, res.summary)
    kfp_reports.write_markdown(report, kfp_reports.summary_markdown("Features", res.summary))
