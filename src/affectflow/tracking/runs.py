"""MLflow tracking: embedded by default (sqlite file + local artifact folder), any URI by config.

What a training run records, so it can be reproduced from MLflow alone: every parameter
(flattened `section.key`), per-epoch metrics, plots, data lineage as tags (manifest hash,
feature-configuration hash, params hash, git commit, DVC-locked data hashes), the model folder,
and the model as a pyfunc that takes audio. Relative sqlite paths and artifact folders are
resolved to absolute ones first, so Ray workers (which run in another folder) log to the same
store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from affectflow.config import Params, TrackingConfig, flatten
from affectflow.contracts.model_folder import content_hash
from affectflow.runtime.device import device_tags
from affectflow.tracking.uri import ensure_store, experiment_artifact_location

MAX_PARAM_CHARS = 6000
"""MLflow's limit on a parameter value; longer values (lists of corpora...) are truncated."""

log = logging.getLogger(__name__)


MODEL_HASH_TAG = "model_content_hash"
"""Tag of a training run: the content hash of the model folder it logged."""

def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; its id.

    A new experiment's artifacts go to `tracking.artifact_location`; an experiment created before
    with another location keeps its own (MLflow cannot move it) and a warning says so."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = ensure_store(cfg.uri)
    mlflow.set_tracking_uri(uri)
    wanted = experiment_artifact_location(uri, cfg.artifact_location)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=wanted)
    else:
        exp_id = exp.experiment_id
        if wanted is not None and exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
            log.warning("MLflow experiment %s keeps its artifact location %s (tracking.artifact_location is %s)",
                        cfg.experiment, exp.artifact_location, wanted)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flat_params(params: Params, sections: Sequence[str] | None = None) -> dict[str, str]:
    """`section.key` -> value text for the given sections (default: all)."""
    out = {}
    keep = tuple(f"{s}." for s in sections) if sections is not None else None
    for k, v in flatten(params).items():
        if keep is not None and not k.startswith(keep):
            continue
        s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        out[k] = s if len(s) <= MAX_PARAM_CHARS else s[: MAX_PARAM_CHARS - 3] + "..."
    return out


@contextlib.contextmanager
def start_run(params: Params, run_name: str, tags: Mapping[str, str] | None = None,
              resume_file: str | Path | None = None, log_params: bool = True,
              sections: Sequence[str] | None = None) -> Iterator[Any]:
    """An MLflow run (nested when another run is active). With `resume_file`, a run interrupted
    earlier continues under its old id (its id is kept in that file), so a resumed training run is
    one MLflow run. Parameters logged: the `sections` the stage reads (default: all)."""
    import mlflow

    configure(params.tracking)
    run_id = None
    rf = Path(resume_file) if resume_file else None
    if rf and rf.is_file():
        old = rf.read_text().strip()
        try:
            if mlflow.get_run(old).info.lifecycle_stage == "active":
                run_id = old
        except Exception:  # unknown id in this store: start a new run
            run_id = None
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested,
                          tags={**device_tags(), **(tags or {})}) as run:
        if rf:
            rf.parent.mkdir(parents=True, exist_ok=True)
            rf.write_text(run.info.run_id)
        if log_params and run_id is None:
            mlflow.log_params(flat_params(params, sections))
        yield run


def run_info(run: Any) -> dict[str, str]:
    import mlflow

    return {"tracking_uri": mlflow.get_tracking_uri(), "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id}


class EpochLogger:
    """Per-epoch metrics from inside a training loop (any process) to one run."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()])


@contextlib.contextmanager
def reopen_run(run_meta: Mapping[str, str] | None, params: Params, run_name: str,
               tags: Mapping[str, str] | None = None, sections: Sequence[str] | None = None,
               model_hash: str | None = None) -> Iterator[Any]:
    """Log into the run that trained a model when it lives in the configured store and logged this
    very model (`model_hash`, the folder's content hash, equals the run's `model_content_hash` tag:
    an edited copy of the folder carries the same run id but is another model); otherwise a new
    run. (Evaluation belongs with the training run so one run tells the whole story.)"""
    import mlflow

    configure(params.tracking)
    run_id = None
    if run_meta and run_meta.get("run_id") and run_meta.get("tracking_uri") == mlflow.get_tracking_uri():
        try:
            logged = mlflow.get_run(run_meta["run_id"]).data.tags.get(MODEL_HASH_TAG)
            run_id = run_meta["run_id"] if model_hash is None or logged in (None, model_hash) else None
        except Exception:
            run_id = None
    nested = mlflow.active_run() is not None
    # A reopened run keeps its own tags (stage=train...); only a new run gets `tags`.
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested,
                          tags=None if run_id else {**device_tags(), **(tags or {})}) as run:
        if run_id is None:
            mlflow.log_params(flat_params(params, sections))
        yield run


def log_training(run: Any, classes: list[str], summary: Mapping[str, Any], curves: str | Path,
                 model_dir: str | Path) -> None:
    """End-of-training records: summary metrics, curves and the model folder (the pyfunc model is
    logged by `affectflow.serving.pyfunc.log_pyfunc`)."""
    import mlflow

    # Per-epoch curves are val_uar, val_wa...; the chosen checkpoint's values get their own names.
    mlflow.log_metrics({name: float(summary[k]) for name, k in (("best_val_uar", "val_uar"), ("best_val_wa", "val_wa"),
                                                               ("best_epoch", "best_epoch"), ("epochs_run", "epochs_run"))
                        if summary.get(k) is not None})
    mlflow.set_tags({"classes": ",".join(classes), "model_dir": str(Path(model_dir).resolve()),
                     MODEL_HASH_TAG: content_hash(model_dir)})
    mlflow.log_artifact(str(curves), artifact_path="plots")
    mlflow.log_dict(dict(summary), "train_summary.json")
    mlflow.log_artifacts(str(model_dir), artifact_path="model_folder")
    log.info("MLflow run %s: model folder logged", run.info.run_id)
