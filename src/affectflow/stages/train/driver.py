"""Training, step 3 (driver): run the worker loop through Ray Train's `TorchTrainer`.

`train.num_workers: 0` is Ray Train local mode (the loop runs in this process: laptop, CI);
N >= 1 runs N workers with DDP, on the Ray cluster at RAY_ADDRESS (KubeRay) or on a local Ray
started for the run. Checkpoints go to the run's `ckpt_dir` (local mode) or Ray's storage path
(workers), which the pipeline points at shared storage so that every worker, and a retried task,
sees them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from affectflow.config import TrainConfig
from affectflow.stages.train.loop import TrainingInterrupted, train_loop_per_worker
from affectflow.stages.train.plan import TrainingError, WorkerConfig

RAY_STORAGE_ENV = "AFFECTFLOW_RAY_STORAGE"
"""Shared storage (s3://... or a mounted volume) for Ray Train's run folders when workers run on
other machines: every worker must read and write the same checkpoints there."""


def use_gpu(tc: TrainConfig) -> bool:
    """Whether Ray workers get a GPU each: `cuda`, or `auto` when the cluster (or this machine) has one."""
    if tc.device != "auto":
        return tc.device == "cuda"
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0)) > 0
    from affectflow.runtime.device import cuda_available

    return cuda_available()


def storage_path(cfg: WorkerConfig) -> str:
    return os.environ.get(RAY_STORAGE_ENV) or str(Path(cfg.ckpt_dir).parent)


def fit(tc: TrainConfig, cfg: WorkerConfig, run_name: str) -> dict[str, Any]:
    """Run the loop; returns rank 0's outcome (history, best weights)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    started = False
    if tc.num_workers > 0 and not ray.is_initialized():
        ray.init(num_cpus=None if os.environ.get("RAY_ADDRESS") else max(tc.num_workers, os.cpu_count() or 1),
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        started = True
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"worker": cfg},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.num_workers > 0 and use_gpu(tc)),
        run_config=RunConfig(name=run_name, storage_path=storage_path(cfg),
                             checkpoint_config=CheckpointConfig(num_to_keep=tc.checkpoints_to_keep),
                             failure_config=FailureConfig(max_failures=tc.max_failures)),
    )
    try:
        result = trainer.fit()
    except TrainingInterrupted:
        raise
    except Exception as e:
        if "TrainingInterrupted" in str(e):
            raise TrainingInterrupted(f"train.stop_after_epochs={tc.stop_after_epochs}: stopped; run again "
                                      f"to resume from {cfg.ckpt_dir}") from None
        raise
    finally:
        if started:
            ray.shutdown()
    outcome = result.return_value
    if not outcome or outcome.get("best_state") is None:
        raise TrainingError(f"{cfg.ckpt_dir}: training returned no model (no epoch completed)")
    return outcome
