"""The monitor's trigger of the retraining loop: a run of the uploaded training pipeline (its latest
version), started by the monitor pipeline when `affectflow monitor` asks for retraining."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from affectflow.orchestration.cluster import pipeline_id_in
from affectflow.orchestration.ir import PIPELINE_NAME, PipelineError


def trigger_retraining(client: Any, *, experiment: str, namespace: str | None = None, pipeline: str = PIPELINE_NAME,
                       reason: str = "monitor") -> dict[str, str]:
    """Start the latest uploaded version of `pipeline` in `experiment`; its run id and names."""
    pid = pipeline_id_in(client, pipeline, namespace)
    if pid is None:
        raise PipelineError(f"no pipeline named {pipeline!r} is uploaded{f' in {namespace!r}' if namespace else ''} "
                            "(affectflow pipeline upload); the monitor cannot start retraining")
    versions = getattr(client.list_pipeline_versions(pipeline_id=pid, sort_by="created_at desc", page_size=1),
                       "pipeline_versions", None) or []
    if not versions:
        raise PipelineError(f"pipeline {pipeline!r} ({pid}) has no version")
    exp = client.create_experiment(name=experiment, namespace=namespace)
    name = f"{pipeline}-{reason}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, pipeline_id=pid,
                              version_id=versions[0].pipeline_version_id)
    return {"run_id": str(run.run_id), "run_name": name, "pipeline_id": pid,
            "version_id": str(versions[0].pipeline_version_id)}
