"""Training, step 3 (driver): run the worker loop through Ray Train's `TorchTrainer`.

`train.num_workers: 0` is Ray Train local mode (the loop runs in this process: laptop, CI);
N >= 1 runs N workers with DDP, on the Ray cluster at RAY_ADDRESS (KubeRay: the chart's
`http://<head>:8265`, where this driver is submitted as a Ray job, `stages/train/ray_job.py`; a
`ray://` address still works through Ray Client; empty = unset) or on a local Ray started for the run. Checkpoints go to the
run's folder under the checkpoint root (`shared.checkpoint_root`, Ray's storage path), which the
pipeline points at S3 so that every worker, and a retried task, sees them; on a Ray cluster the
workers read the run's inputs from a pack on the same storage (`shared.stage_inputs`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from affectflow.config import TrainConfig
from affectflow.stages.train.loop import TrainingInterrupted, train_loop_per_worker
from affectflow.stages.train.plan import TrainingError, WorkerConfig
from affectflow.stages.train.ray_job import submit, uses_jobs_api
from affectflow.stages.train.shared import RAY_ADDRESS_ENV, RAY_STORAGE_ENV, ray_address, stage_inputs

__all__ = ["RAY_STORAGE_ENV", "fit", "use_gpu"]

log = logging.getLogger(__name__)


def use_gpu(tc: TrainConfig) -> bool:
    """Whether Ray workers get a GPU each: `cuda`, or `auto` when the cluster (or this machine) has one."""
    if tc.device != "auto":
        return tc.device == "cuda"
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0)) > 0
    from affectflow.runtime.device import auto_uses_cuda

    return auto_uses_cuda("train.device")


def check_gpus_for_workers(tc: TrainConfig, gpu: bool) -> None:
    """Refuse, before Ray starts anything, more GPU workers than there are GPUs to give them: on the
    pod's own Ray (no RAY_ADDRESS) the GPUs it sees; on a cluster, a warning only (an autoscaler may
    add GPU nodes), the bounded controller failure limit ending a run that can never be placed."""
    if not gpu or tc.num_workers == 0:
        return
    if ray_address():
        import ray

        if ray.is_initialized():
            have = int(float(ray.cluster_resources().get("GPU", 0)))
            if have < tc.num_workers:
                log.warning("train.num_workers=%d GPU workers but the Ray cluster has %d GPU(s) now; the run waits "
                            "for an autoscaler to add them and fails after train.controller_failure_limit=%d "
                            "scheduling failures", tc.num_workers, have, tc.controller_failure_limit)
        return
    from affectflow.runtime.device import visible_gpus

    have = visible_gpus()
    if have < tc.num_workers:
        raise TrainingError(f"train.num_workers: {tc.num_workers} GPU workers but this pod sees {have} GPU(s) "
                            "(Ray would wait for them for ever while holding the pod): set train.num_workers "
                            f"<= {have}, raise pipeline.gpu_limit / pipeline.resources.train.gpu, or set "
                            "train.device: cpu")


def _connect(tc: TrainConfig) -> bool:
    """ray.init for N >= 1 workers: the cluster at RAY_ADDRESS, else a local Ray with this machine's
    cores (no dashboard). Returns whether this call started it (and so shuts it down)."""
    import ray

    if tc.num_workers == 0 or ray.is_initialized():
        return False
    address = ray_address()
    if address:  # Ray Client (ray://) takes no resource or dashboard arguments
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        os.environ.pop(RAY_ADDRESS_ENV, None)  # "" would still be read as an address
        ray.init(num_cpus=max(tc.num_workers, os.cpu_count() or 1), include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True)
    return True


def _storage_path(cfg: WorkerConfig) -> str:
    """Ray's storage: the checkpoint root for workers; local mode persists nothing through Ray (the
    loop keeps its own epoch folders), so there it is the local folder above the run's."""
    if cfg.local_mode or not cfg.storage:
        return str(Path(cfg.ckpt_dir).parent)
    return cfg.storage


def failure_config(tc: TrainConfig) -> Any:
    """Ray Train's FailureConfig: worker-group restarts from the last checkpoint, and a bounded number of
    controller failures (Ray's -1 default would retry an unschedulable worker group for ever)."""
    from ray.train import FailureConfig

    return FailureConfig(max_failures=tc.max_failures, controller_failure_limit=tc.controller_failure_limit)


def fit(tc: TrainConfig, cfg: WorkerConfig, run_name: str) -> dict[str, Any]:
    """Run the loop; returns rank 0's outcome (history, best weights)."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray_address() and tc.num_workers == 0:
        log.warning("RAY_ADDRESS=%s but train.num_workers is 0: training runs in this process, not on the "
                    "Ray cluster", ray_address())
    if ray_address() and tc.num_workers > 0 and cfg.inputs is None:
        cfg = stage_inputs(cfg, run_name)  # workers on other nodes cannot read this pod's folders
    if tc.num_workers > 0 and uses_jobs_api(ray_address()):  # the driver runs on the cluster, as a Ray job
        return submit(tc, cfg, run_name, ray_address())
    if ray_address().startswith("ray://"):
        log.warning("RAY_ADDRESS=%s is Ray Client, which Ray advises against for Ray Train: use the head's "
                    "dashboard address (http://<head>:8265) to submit a Ray job", ray_address())
    if not ray_address():
        check_gpus_for_workers(tc, tc.num_workers > 0 and use_gpu(tc))  # before a local Ray starts
    started = _connect(tc)
    gpu = tc.num_workers > 0 and use_gpu(tc)
    if ray_address():
        check_gpus_for_workers(tc, gpu)
    where = cfg.ckpt_uri or cfg.ckpt_dir
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"worker": cfg},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=gpu),
        run_config=RunConfig(name=run_name, storage_path=_storage_path(cfg),
                             checkpoint_config=CheckpointConfig(num_to_keep=tc.checkpoints_to_keep),
                             failure_config=failure_config(tc)),
    )
    try:
        result = trainer.fit()
    except TrainingInterrupted:
        raise
    except Exception as e:
        if "TrainingInterrupted" in str(e):
            raise TrainingInterrupted(f"train.stop_after_epochs={tc.stop_after_epochs}: stopped; run again "
                                      f"to resume from {where}") from None
        raise
    finally:
        if started:
            ray.shutdown()
    outcome = result.return_value
    if not outcome or outcome.get("best_state") is None:
        raise TrainingError(f"{where}: training returned no model (no epoch completed)")
    return outcome
