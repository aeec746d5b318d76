"""Where `affectflow predict` and `affectflow monitor` find the prediction log (`monitor:` settings).

Apart from `serving.prediction_log` on purpose: the log's writer and reader are imported by the
servers and the pretrain stage, which read no `monitor:` section; the settings are read here only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affectflow.serving.prediction_log import Recorder, attach_recorder
from affectflow.storage.s3 import S3Store, is_s3


def default_location(params: Any) -> str:
    """`monitor.log`, else `<paths.workdir>/prediction_log`."""
    if params.monitor.log:
        return params.monitor.log
    root = params.paths.workdir.rstrip("/")
    return f"{root}/prediction_log" if is_s3(root) else str(Path(root) / "prediction_log")


def attach_predict_log(params: Any, rec: Any, model: str, store: S3Store | None = None) -> Recorder | None:
    """`affectflow predict`'s log at `default_location` when `monitor.enabled`."""
    if not params.monitor.enabled:
        return None
    return attach_recorder(rec, default_location(params), params.monitor, model, "predict", store)
