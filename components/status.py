"""The exit handler's task: record how the run ended (also when it failed) in MLflow."""

from kfp import dsl

from components.base import component


@component("cpu")
def record_run_status(status: dsl.PipelineTaskFinalStatus, tracking_uri: str, experiment: str,
                      artifact_location: str) -> str:
    """Write the run's final state, failing task and error as an MLflow run in
    `<experiment>-pipelines`; returns the state. Never fails the pipeline itself."""
    from affectflow.orchestration import kfp_tracking

    return kfp_tracking.record_status(status, tracking_uri, experiment, artifact_location)
