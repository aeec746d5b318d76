"""Settings of the platform sections: tracking, registry, the Kubeflow pipeline, S3."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from affectflow.config.base import Section


# --------------------------------------------------------------------------- tracking, registry, pipeline
class TrackingConfig(Section):
    uri: str = "sqlite:///artifacts/mlflow.db"
    artifact_location: str = "artifacts/mlartifacts"
    experiment: str = "affectflow"
    log_model: bool = True
    """Log each trained model as a pyfunc (audio in, probabilities out); k-fold runs never do."""


class RegistryConfig(Section):
    model_name: str = "affectflow-ser"
    min_uar_gain: float = Field(0.005, ge=0)
    """Challenger UAR must reach champion UAR + this margin to take `champion`."""
    min_class_recall: float = Field(0.0, ge=0, le=1)
    """No class recall of a promoted version may fall below this floor."""
    auto_promote: bool = True
    """`register` moves `champion` itself when the gate passes (False: record the gate only)."""
    guard_corpora: list[str] = Field(default_factory=list)
    """Generalization guard (`tracking/guard.py`): the challenger is refused when its UAR on any of
    these corpora (evaluate's per-corpus breakdown, on the champion's clips) is more than
    `guard_margin` below the champion's; empty = off."""
    guard_margin: float = Field(0.01, ge=0)
    history_limit: int = Field(200, ge=1)
    """Promotion / rollback events kept (one `event.<seq>` tag each on the registered model; the
    oldest are dropped first, except those the rollback stack still needs)."""


_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
class TaskResources(Section):
    """CPU / memory requests and limits of one pipeline task (Kubernetes quantities); unset fields
    keep the built-in default of that task (`affectflow.orchestration.resources.DEFAULT_TASK_RESOURCES`)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpu: int | None = Field(None, ge=0)
    """GPUs of a GPU task (augment, pretrain, train, features on the GPU); unset: pipeline.gpu_limit."""
    timeout_s: int | None = Field(None, ge=1)
    """Seconds before Kubernetes stops the task's pod (activeDeadlineSeconds): a hung task must not hold
    its node, or its GPU, for ever."""

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _number_as_text(cls, v: Any) -> Any:
        """`cpu_limit: 2` in YAML is a number; Kubernetes quantities are text."""
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, v: str | None) -> str | None:
        if v is not None and not _CPU.match(v):
            raise ValueError(f"{v!r} is not a CPU quantity (e.g. '500m', '2')")
        return v

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not _MEMORY.match(v):
            raise ValueError(f"{v!r} is not a memory quantity (e.g. '512Mi', '4Gi')")
        return v


class PipelineConfig(Section):
    """Compile-time settings of the Kubeflow pipeline (never part of a run's form or a cache key)."""

    host: str = ""
    namespace: str = "kubeflow"
    """Where pipeline runs execute; must equal the chart's `kubeflow.namespace`."""
    image_cpu: str = ""
    image_gpu: str = ""
    gpu_limit: int = Field(1, ge=0)
    """GPUs per GPU task (augment, pretrain, train; features when log-mel runs on the GPU); 0 = none."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    s3_secret: str = "affectflow-s3"
    """Secret with AWS_* / MLFLOW_S3_ENDPOINT_URL, mounted (required) on every data task."""
    mlflow_secret: str = "affectflow-mlflow"
    """Secret with MLFLOW_TRACKING_URI, mounted (required) on the tasks that log or register."""
    env_config_map: str = "affectflow-pipeline-env"
    """The chart's ConfigMap with RAY_ADDRESS and AFFECTFLOW_RAY_STORAGE (chart `kubeflow.envConfigMapName`)."""
    require_tracking_server: bool = True
    """In a Kubeflow pod, a task that logs to MLflow fails (naming the Secret key) unless
    MLFLOW_TRACKING_URI names a tracking server: a sqlite file inside a pod vanishes with it."""
    ray_cluster: bool = False
    """true: the train task submits its Ray workers (train.num_workers >= 1) to the KubeRay cluster at
    the ConfigMap's RAY_ADDRESS; the train pod then runs in the CPU image and requests no GPU (the Ray
    workers hold them). false: Ray runs inside the train pod, which gets the GPU."""
    features_on_gpu: Literal["auto", "always", "never"] = "auto"
    """Run the features task in the GPU image with a GPU: auto = when log-mel is extracted and
    features.device is not cpu (and gpu_limit > 0)."""
    features_parallelism: int = Field(8, ge=0)
    """Most `features` shard tasks (pods) at once in the fan-out (`dsl.ParallelFor`); 0 = no limit."""
    resources: dict[str, TaskResources] = Field(default_factory=dict)
    """Per task (component name: ingest, features, train, ...): overrides of the built-in defaults
    (`affectflow.orchestration.resources`, which also checks the task names at compile time)."""
    run_as_user: int = Field(10001, ge=1)
    """UID (and GID) every task runs as, non-root (the images own /minio, /s3, /gcs for it)."""
    retries: int = Field(2, ge=0)
    schedule_cron: str = "0 0 3 * * 1"
    max_concurrency: int = Field(1, ge=1)


class S3Config(Section):
    """Object storage for s3:// corpora, features and models; credentials come from the AWS env."""

    endpoint_url: str = ""
    """Empty: AWS_ENDPOINT_URL from the environment (or AWS itself)."""
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    """path-style URLs work with SeaweedFS/MinIO and in-cluster service names."""
    cache_dir: str = ""
    """Local mirror of s3:// inputs; empty: <paths.workdir>/s3cache (or ~/.cache/affectflow/s3)."""
    multipart_threshold_mb: int = Field(16, ge=5)
    multipart_chunksize_mb: int = Field(16, ge=5)
    """S3 parts are at least 5 MiB (except the last)."""
    max_concurrency: int = Field(8, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    """Longest wait for an answer on an open connection, per attempt (10 s x 3 attempts: an endpoint
    that never answers fails within 30 s by default)."""
    max_attempts: int = Field(3, ge=1)
    """Tries per request, the first included (an endpoint that never answers fails after about
    max_attempts x read_timeout_s, as S3EndpointError)."""
