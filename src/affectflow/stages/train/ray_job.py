"""Training, step 3 on a Ray cluster: submit the driver as a Ray job (Ray's Jobs API), not through Ray Client.

Ray's documentation advises against Ray Client for Ray Train (the driver's state lives in the client pod;
a dropped connection loses the run). With RAY_ADDRESS set to the head's dashboard (`http://<head>:8265`,
the chart's value), the train task writes the run's specification to the shared storage, submits
`python -m affectflow.stages.train.ray_job <spec>` with `JobSubmissionClient`, follows its status and log,
and reads back the outcome the job wrote beside the spec. The job runs `driver.fit` on the cluster (inside a
job, Ray connects to its own cluster), with the inputs pack remote workers read (`shared.stage_inputs`).
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affectflow.config import TrainConfig
from affectflow.stages.train.plan import TrainingError, WorkerConfig
from affectflow.stages.train.shared import join

log = logging.getLogger(__name__)

ENTRYPOINT_MODULE = "affectflow.stages.train.ray_job"
JOBS_SCHEMES = ("http://", "https://")
FORWARDED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "AFFECTFLOW_")
"""The task's settings and credentials the job's driver needs too (runtime_env env_vars)."""
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def uses_jobs_api(address: str) -> bool:
    """RAY_ADDRESS names the dashboard (Jobs API) rather than a Ray Client (`ray://`) or GCS address."""
    return address.startswith(JOBS_SCHEMES)


def _write(uri: str, data: bytes) -> None:
    if uri.startswith("s3://"):
        from affectflow.storage import s3

        s3.shared_store().write_bytes(uri, data)
    else:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)


def _read(uri: str) -> bytes:
    if uri.startswith("s3://"):
        from affectflow.storage import s3

        return s3.read_bytes(uri)
    return Path(uri).read_bytes()


def _dump(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), weights_only=False)  # our own spec / outcome, written by this module


def submit(tc: TrainConfig, cfg: WorkerConfig, run_name: str, address: str, *,
           client_factory: Callable[[str], Any] | None = None, poll_s: float = 5.0) -> dict[str, Any]:
    """Run `driver.fit` as a Ray job on the cluster at `address`; returns its outcome (rank 0's)."""
    if not cfg.storage:
        raise TrainingError(f"RAY_ADDRESS={address}: a Ray job needs shared storage for its spec and outcome "
                            "(set AFFECTFLOW_RAY_STORAGE, the chart's ConfigMap does)")
    job = f"{run_name}-{uuid.uuid4().hex[:8]}"
    spec_uri = join(cfg.storage, "jobs", f"{job}.spec.pt")
    outcome_uri = join(cfg.storage, "jobs", f"{job}.outcome.pt")
    _write(spec_uri, _dump({"train": tc, "worker": cfg, "run_name": run_name, "outcome": outcome_uri}))
    if client_factory is None:
        from ray.job_submission import JobSubmissionClient

        client_factory = JobSubmissionClient
    client = client_factory(address)
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    job_id = client.submit_job(entrypoint=f"python -m {ENTRYPOINT_MODULE} {shlex.quote(spec_uri)}",
                               submission_id=job, runtime_env={"env_vars": env})
    log.info("submitted Ray job %s to %s", job_id, address)
    shown = 0
    while True:
        status = str(getattr(client.get_job_status(job_id), "value", client.get_job_status(job_id)))
        logs = client.get_job_logs(job_id) or ""
        if len(logs) > shown:  # the job's driver log, into this task's log
            sys.stderr.write(logs[shown:])
            shown = len(logs)
        if status in TERMINAL:
            break
        time.sleep(poll_s)
    if status != "SUCCEEDED":
        info = client.get_job_info(job_id)
        tail = "\n".join(logs.splitlines()[-20:])
        raise TrainingError(f"Ray job {job_id} on {address}: {status} ({getattr(info, 'message', '')}); "
                            f"last log lines:\n{tail}")
    return dict(_load(_read(outcome_uri)))


def run_spec(spec_uri: str) -> None:
    """The job's entry point: the spec's training, on this cluster; the outcome beside the spec."""
    from affectflow.stages.train.driver import fit

    spec = _load(_read(spec_uri))
    outcome = fit(spec["train"], spec["worker"], spec["run_name"])
    _write(spec["outcome"], _dump(outcome))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run_spec(sys.argv[1])
