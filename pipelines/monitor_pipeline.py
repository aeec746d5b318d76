"""The monitor pipeline: `affectflow monitor` on a schedule, and the retraining pipeline started
when it asks for it.

monitor (the prediction log's last window vs the served model's training data; report in the KFP
UI) -> [action == retrain and trigger_retraining] start-retraining (a run of the uploaded
`affectflow-train`). Schedule it like the training pipeline (`affectflow pipeline schedule
--package pipelines/compiled/affectflow-monitor.yaml --cron ...`); with `trigger_retraining` off
(the default) a flagged window only shows in the run's output and report.
"""

from typing import Any

from kfp import dsl

from affectflow.config import Params
from affectflow.orchestration.run_form import base_yaml
from components.monitor import monitor, start_retraining
from pipelines.train_pipeline import _platform

MONITOR_PIPELINE_NAME = "affectflow-monitor"


def build_monitor_pipeline(p: Params) -> Any:
    """The monitor pipeline for params `p` (params.yaml compiled in; run-form: model, log, reference data)."""
    base = base_yaml(p)

    def body(model_uri: str = p.predict.model_uri, log: str = p.monitor.log, features: str = "",
             manifest: str = "", trigger_retraining: bool = False, experiment: str = p.tracking.experiment) -> None:
        task = _platform(monitor(params_yaml=base, model_uri=model_uri, log=log, features=features,
                                 manifest=manifest), p, gpu=False, secrets=("s3", "mlflow"))
        task.set_caching_options(False)  # the log grows: every scheduled run looks again
        task.set_display_name("monitor")
        with dsl.If(task.outputs["Output"] == "retrain", name="drift-or-collapse"), \
                dsl.If(trigger_retraining == True, name="trigger-on"):  # noqa: E712 (a KFP condition, not Python)
            start = _platform(start_retraining(host=p.pipeline.host, namespace=p.pipeline.namespace,
                                               experiment=experiment), p, gpu=False, secrets=())
            start.set_caching_options(False)
            start.set_display_name("start retraining")

    body.__name__ = "affectflow_monitor"
    body.__doc__ = __doc__
    return dsl.pipeline(name=MONITOR_PIPELINE_NAME, description=__doc__.splitlines()[0])(body)
