"""monitor: the prediction log's last window vs the model's training data (`affectflow monitor`)."""

from kfp.dsl import Artifact, Markdown, Output

from components.base import component


@component("cpu")
def monitor(params_yaml: str, model_uri: str, log: str, features: str, manifest: str, result: Output[Artifact],
            report: Output[Markdown]) -> str:
    """Drift / collapse verdict of the served model's traffic (`affectflow.serving.monitor.run`):
    result.json and plots in `result`, the report for the KFP UI in `report`; returns the action
    (`retrain` or `none`), which the pipeline's condition reads."""
    from pathlib import Path

    from affectflow.config import params_from_text
    from affectflow.orchestration import kfp_reports

    params = params_from_text(params_yaml, "monitor pipeline params")
    from affectflow.serving.monitor import run

    res = run(
        params, {"model": model_uri or None, "log": log or None, "features": features or None,
                 "manifest": manifest or None}, Path(result.path))
    result.metadata.update(action=res.summary["action"], clips=int(res.summary["clips"]))
    kfp_reports.write_markdown(report, kfp_reports.report_text(result.path))
    return str(res.summary["action"])


@component("cpu")
def start_retraining(host: str, namespace: str, experiment: str) -> str:
    """Start the latest uploaded version of the training pipeline (the retraining loop's trigger,
    `affectflow.orchestration.retrain_trigger`); returns the run id."""
    from affectflow.config import load_params
    from affectflow.orchestration.cluster import kfp_client
    from affectflow.orchestration.retrain_trigger import trigger_retraining

    client = kfp_client(load_params(None), host or None, namespace or None)
    return trigger_retraining(client, experiment=experiment, namespace=namespace or None)["run_id"]
