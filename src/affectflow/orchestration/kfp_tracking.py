"""MLflow inside a Kubeflow task: where a task's tracking server comes from, the first task's
check that it answers, and the exit handler's record of how a run ended.

In a pod, `MLFLOW_TRACKING_URI` (from the MLflow Secret) replaces `tracking.uri`; a pipeline
compiled with `pipeline.require_tracking_server` refuses to fall back to a file inside the pod.
"""

from __future__ import annotations

import os
from typing import Any

from affectflow.config import Params

TRACKING_ENV = "MLFLOW_TRACKING_URI"
"""Set in a Kubeflow task by the MLflow Secret: the cluster's MLflow, which replaces tracking.uri
(a sqlite file inside a pod would vanish with it)."""
TRACKING_SECRET_ENV = "AFFECTFLOW_TRACKING_SECRET"
"""Baked into the tasks that log to MLflow when the pipeline is compiled with
pipeline.require_tracking_server: the Secret their MLFLOW_TRACKING_URI comes from."""
KFP_POD_ENV = "KFP_POD_NAME"
"""Set by the Kubeflow Pipelines backend in every task pod (kfp.local does not set it)."""
SERVER_SCHEMES = ("http://", "https://", "databricks")
PROBE_TIMEOUT_S = 10.0
PROBE_ATTEMPTS = 3


class TrackingServerError(RuntimeError):
    """A Kubeflow task that must log to a tracking server has none; the message names the Secret key."""


def required_tracking_secret() -> str | None:
    """The Secret this task's tracking server must come from: in a Kubeflow pod (KFP_POD_NAME) of a
    pipeline compiled with pipeline.require_tracking_server; None elsewhere (kfp.local, the CLI)."""
    secret = os.environ.get(TRACKING_SECRET_ENV, "").strip()
    return secret if secret and os.environ.get(KFP_POD_ENV) else None


def _where(secret: str) -> str:
    return f"Secret '{secret}' key '{TRACKING_ENV}'"


def check_tracking_env(configured: str) -> str | None:
    """The tracking server URI of a task that requires one; raises naming the Secret key when the
    key is missing, empty or not a server (the fallback `configured` would be a file in the pod)."""
    secret = required_tracking_secret()
    if secret is None:
        return None
    uri = os.environ.get(TRACKING_ENV, "").strip()
    if not uri:
        raise TrackingServerError(
            f"{TRACKING_ENV} is not set in this Kubeflow task: {_where(secret)} is missing or empty. Without it "
            f"MLflow would write to tracking.uri={configured!r} inside the pod, and the run's results and "
            f"registered models would vanish with the pod. Create the Secret in the pipeline's namespace (the "
            f"chart's kubeflow.mlflowSecretName) or compile with pipeline.require_tracking_server: false")
    if not uri.startswith(SERVER_SCHEMES):
        raise TrackingServerError(f"{_where(secret)} is {uri!r}: not a tracking server (http:// or https://); "
                                  "a file store inside a pod vanishes with it")
    return uri


def probe_tracking_server(uri: str, secret: str, timeout_s: float = PROBE_TIMEOUT_S,
                          attempts: int = PROBE_ATTEMPTS) -> None:
    """GET <uri>/health until it answers 200 (a few tries, bounded); raises naming the Secret key."""
    import time
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    last = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if attempt + 1 < attempts:
            time.sleep(min(5.0, timeout_s))
    raise TrackingServerError(f"MLflow tracking server {uri} ({_where(secret)}) does not answer {uri.rstrip('/')}"
                              f"/health after {attempts} tries: {last}")


def preflight() -> None:
    """The first task's check (resolve-params): the tracking server the run needs is configured and
    answers, so a run without one fails before any work, naming the Secret key."""
    secret = required_tracking_secret()
    if secret is None:
        return
    uri = check_tracking_env("")
    assert uri is not None
    probe_tracking_server(uri, secret)
    print(f"tracking server {uri} ({_where(secret)}) answers")


def tracking_from_env(params: Params) -> Params:
    """tracking.uri <- MLFLOW_TRACKING_URI when set; in a Kubeflow task that requires a tracking
    server, its absence is an error instead of a silent fallback to a file inside the pod."""
    uri = check_tracking_env(params.tracking.uri) or os.environ.get(TRACKING_ENV)
    if uri and uri != params.tracking.uri:
        params.tracking.uri = uri
    return params


def tracking_uri(configured: str) -> str:
    """The MLflow URI a task uses: MLFLOW_TRACKING_URI when set, else the configured one."""
    return os.environ.get(TRACKING_ENV) or configured


STATUS_EXPERIMENT_SUFFIX = "-pipelines"
"""Run-status records go to `<tracking.experiment>-pipelines`, apart from the training runs."""


def record_status(status: Any, configured_uri: str, experiment: str, artifact_location: str = "") -> str:
    """Record a pipeline run's final state in MLflow (the exit handler's job); returns the state.

    A failure to reach MLflow is printed, not raised: the exit task must not turn a finished run
    into a failed one, and a failed run is already marked failed in Kubeflow.
    """
    info = {"state": str(getattr(status, "state", "UNKNOWN")),
            "job": str(getattr(status, "pipeline_job_resource_name", "") or ""),
            "task": str(getattr(status, "pipeline_task_name", "") or ""),
            "error_code": str(getattr(status, "error_code", "") or ""),
            "error_message": str(getattr(status, "error_message", "") or "")}
    print(f"pipeline run {info['job']}: {info['state']}" + (f" ({info['error_message']})"
                                                           if info["error_message"] else ""))
    try:
        from mlflow import MlflowClient

        from affectflow.tracking.uri import resolve_uri

        uri = resolve_uri(tracking_uri(configured_uri))
        client = MlflowClient(tracking_uri=uri)
        name = experiment + STATUS_EXPERIMENT_SUFFIX
        exp = client.get_experiment_by_name(name)
        from affectflow.tracking.uri import experiment_artifact_location

        root = experiment_artifact_location(uri, artifact_location)
        location = f"{root.rstrip('/')}/{name}" if root else None
        exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=location)
        tags = {f"pipeline.{k}": v[:5000] for k, v in info.items() if v}
        run = client.create_run(exp_id, run_name=info["job"] or "pipeline-run", tags=tags)
        client.set_terminated(run.info.run_id, status="FINISHED" if info["state"] == "SUCCEEDED" else "FAILED")
        print(f"recorded in MLflow {uri}: experiment {name!r}, run {run.info.run_id}")
    except Exception as e:  # recording is best effort; say why it did not happen
        print(f"could not record the run status in MLflow ({configured_uri}): {e}")
    return info["state"]
