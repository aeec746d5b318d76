"""What prediction scores with: an affectflow recognizer on a device, or any pyfunc with the
contract; where the deployment statistics are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.model_folder import ModelMeta, is_model_folder
from affectflow.corpora.dimensions import DIMENSIONS
from affectflow.runtime.device import resolve_device
from affectflow.serving.predict_log import attach_predict_log
from affectflow.serving.recognizer import Featurizer, load_model_dir, predict_scores
from affectflow.storage.s3 import is_s3, store_for
from affectflow.tracking.uri import local_sqlite, mlflow_scope, resolve_uri

CHAMPION_ALIAS = "champion"
# ----------------------------------------------------------------------------- models
class Backend(Protocol):
    """What prediction needs from a model: its classes, its audio rate, waveforms -> (n, C) or, for
    a model with a dimensional head, (n, C + len(dimensions)): probabilities, then the dimensions
    (`dimensions` attribute; absent = none)."""

    uri: str
    classes: list[str]
    sample_rate: int

    def predict(self, waves: list[np.ndarray]) -> np.ndarray: ...


class RecognizerBackend:
    """An affectflow recognizer (from a model folder or unwrapped from its pyfunc) on a device."""

    def __init__(self, uri: str, rec: Any, device: Any, batch_size: int):
        rec.model.to(device)
        rec.device = device
        self.uri = uri
        self.rec = rec
        self.classes = rec.classes
        self.batch_size = batch_size
        self.featurizer = Featurizer(rec.meta, device)  # log-mel and encoders on the model's device
        self.sample_rate = self.featurizer.sample_rate
        self.dimensions = list(rec.meta.dimensions.names) if rec.meta.dimensions else []
        self.weak_labels = bool(rec.meta.dimensions and rec.meta.dimensions.weak_labels)

    def featurize(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return self.featurizer(waves)

    def score(self, features: list[np.ndarray]) -> np.ndarray:
        """Unknown-corpus features standardised by the deployment statistics, in order; (n, C [+ D])."""
        return predict_scores(self.rec, features, self.batch_size).stacked()

    def save(self) -> None:
        """Keep what this run added to the deployment statistics (`predict.deploy_stats`)."""
        self.rec.deployment.save()

    def predict(self, waves: list[np.ndarray]) -> np.ndarray:
        return self.score(self.featurize(waves))


class PyfuncBackend:
    """Any pyfunc with the affectflow contract: `audio` + `sample_rate` in, class columns out."""

    def __init__(self, uri: str, model: Any, sample_rate: int):
        self.uri = uri
        self.model = model
        self.sample_rate = sample_rate
        schema = model.metadata.get_output_schema()
        names = schema.input_names() if schema is not None else []
        self.dimensions = [c for c in names if c in DIMENSIONS]
        self.classes = [c for c in names if c != "label" and c not in DIMENSIONS]
        if not self.classes:
            raise RuntimeError(f"model {uri}: its signature names no output (class) columns")

    def predict(self, waves: list[np.ndarray]) -> np.ndarray:
        df = pd.DataFrame({"audio": [w.astype(np.float64) for w in waves],
                           "sample_rate": [self.sample_rate] * len(waves)})
        out = self.model.predict(df)
        return np.asarray(pd.DataFrame(out)[self.classes + self.dimensions], np.float32)


def default_model_uri(params: Params) -> str:
    return params.predict.model_uri or f"models:/{params.registry.model_name}@{CHAMPION_ALIAS}"


def load_backend(params: Params, model_uri: str | None = None, deployment: bool = True) -> Backend:
    """A local model folder (has model.json) is loaded directly; anything else through MLflow
    (`models:/name@alias`, `models:/name/3`, `runs:/...`, `s3://...`, a local MLflow model folder).
    `deployment`: attach the deployment statistics kept at `predict.deploy_stats` (read now)."""
    cfg = params.predict
    uri = model_uri or default_model_uri(params)
    device = resolve_device(cfg.device, "predict.device")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if is_model_folder(uri):
        return _with_deployment(params, RecognizerBackend(uri, load_model_dir(uri), device, cfg.batch_size), deployment)
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = resolve_uri(params.tracking.uri)
    db = local_sqlite(tracking)
    if db is not None and not db.is_file() and not Path(uri).exists():
        raise RuntimeError(f"model {uri}: tracking.uri {tracking} does not exist (no model was registered "
                           "there); pass a model folder or --set tracking.uri=...")
    try:
        with mlflow_scope(tracking):
            model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise RuntimeError(f"model {uri}: cannot load it (tracking.uri {tracking}): {e}") from None
    try:
        inner = model.unwrap_python_model()
    except MlflowException:
        inner = None
    rec = getattr(inner, "rec", None)
    if rec is not None and hasattr(rec, "model") and hasattr(rec, "meta"):
        return _with_deployment(params, RecognizerBackend(uri, rec, device, cfg.batch_size), deployment)
    return PyfuncBackend(uri, model, params.audio.sample_rate)


def deploy_stats_location(params: Params, meta: ModelMeta) -> str:
    """`predict.deploy_stats`, or the default beside the workdir's other outputs, one file per
    feature configuration (the statistics are of raw features: model versions reading the same
    features share them)."""
    if params.predict.deploy_stats:
        return params.predict.deploy_stats
    name = f"{meta.feature}-{meta.feature_key[:16] or 'nokey'}.json"
    root = params.paths.workdir.rstrip("/")
    return f"{root}/deploy_stats/{name}" if is_s3(root) else str(Path(root) / "deploy_stats" / name)


def _with_deployment(params: Params, backend: RecognizerBackend, attach: bool) -> RecognizerBackend:
    if attach:
        backend.rec.attach_deployment(deploy_stats_location(params, backend.rec.meta), store_for(params))
        attach_predict_log(params, backend.rec, backend.uri, store_for(params))  # monitor.enabled: the prediction log
    return backend
