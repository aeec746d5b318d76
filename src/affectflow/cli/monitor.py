"""`affectflow monitor`: the prediction log's last window vs the model's training data.

Thin wrapper over `affectflow.serving.monitor`. Exit status: 0 nothing to do (or too little traffic
for a verdict), 3 (`RETRAIN_EXIT`) drift or collapse: a schedule (cron, the monitor pipeline, CI) can
start the retraining pipeline on it; 1 an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from affectflow.cli import command
from affectflow.config import Params


def _monitor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="model_uri", help="the deployed model (as for predict; default: predict.model_uri, "
                                                     "else models:/<registry.model_name>@champion)")
    p.add_argument("--log", help="the prediction log (folder or s3:// prefix; default: monitor.log, else "
                                 "<paths.workdir>/prediction_log)")
    p.add_argument("--features", type=Path, help="feature store of the training data (default: <workdir>/features)")
    p.add_argument("--manifest", type=Path, help="the manifest the model was trained from "
                                                 "(default: <workdir>/ingest/manifest.parquet)")
    p.add_argument("--out", type=Path, help="report folder (default: <workdir>/monitor)")
    p.add_argument("--mlflow", action="store_true", help="also log the figures and the report as an MLflow run "
                                                         "(tracking.uri, experiment tracking.experiment)")


@command("monitor", "drift and collapse of the served model's traffic (the prediction log) vs its training data; "
                    "exit 3 when it asks for retraining", _monitor_args)
def _monitor(params: Params, a: argparse.Namespace) -> int:
    from affectflow.serving.monitor import run

    out = a.out or params.workdir() / "monitor"
    res = run(params, {"model": a.model_uri, "log": a.log, "features": a.features, "manifest": a.manifest}, out)
    s = res.summary
    if a.mlflow:
        _log_mlflow(params, res.out_dir, s)
    print(f"monitor: action {s['action']} ({s['reason']}); {s['clips']} clips in the window; report {out}/report.md",
          file=sys.stderr)
    return res.exit_code


def _log_mlflow(params: Params, out_dir: Path, s: dict) -> None:
    import mlflow

    from affectflow.tracking.runs import start_run

    with start_run(params, "monitor", tags={"affectflow.monitor.action": s["action"]}, log_params=False):
        mlflow.log_metrics({k: float(s[k]) for k in ("clips", "domain_auc", "mmd_p_value", "psi_max", "prior_tv")
                            if s.get(k) is not None})
        mlflow.log_artifacts(str(out_dir), artifact_path="monitor")
