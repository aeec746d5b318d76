"""KServe predictor: the registered champion behind the Open Inference Protocol (v2).

The chart's InferenceService runs it on the project's image:

    python -m affectflow.serving.kserve --model_name=affectflow-ser \\
        --model_uri=models:/affectflow-ser@champion --http_port=8080 --reload_interval_s=60

At start-up it resolves the alias in the MLflow registry (MLFLOW_TRACKING_URI), downloads that
version into the temp folder (the pod's writable /tmp) and only then listens, so readiness
(`GET /v2/health/ready`) means a model is loaded. Every `--reload_interval_s` seconds it resolves
the alias again and, when it points at another version, loads that one and swaps it in: promoting a
new champion rolls out without touching the InferenceService (0 = never re-resolve). A failed
reload keeps the running version and logs why.

Request (`POST /v2/models/<model_name>/infer`): one BYTES input (named `audio`, or the only input)
whose elements are base64-encoded audio files (wav, flac, ogg, mp3), one clip per element:

    {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["UklGRi..."]}]}

Response: `probabilities` (FP32, [n, classes], class order in its `classes` parameter) and `label`
(BYTES, [n]); `model_version` is the registry version that answered. A request that is not that
shape, or audio that does not decode, is a 400 whose message names the input and the element.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("affectflow.serving.kserve")

INPUT_NAME = "audio"
PROBABILITIES = "probabilities"
LABEL = "label"
DEFAULT_MODEL_URI = "models:/affectflow-ser@champion"
DEFAULT_RELOAD_S = 60.0


@dataclass(frozen=True)
class ModelRef:
    """A registry reference: `models:/<name>@<alias>` (re-resolved) or `models:/<name>/<version>`."""

    name: str
    alias: str | None
    version: str | None

    @classmethod
    def parse(cls, uri: str) -> ModelRef | None:
        """None for anything that is not a registry URI (runs:/, s3://, a folder): loaded as given."""
        if not uri.startswith("models:/"):
            return None
        rest = uri[len("models:/"):].strip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return cls(name, alias, None) if name and alias else None
        name, _, version = rest.rpartition("/")
        return cls(name, None, version) if name and version else None


@dataclass
class Loaded:
    """One loaded model version: the recognizer, its featurizer and where it came from."""

    uri: str
    version: str
    rec: Any
    featurizer: Any
    folder: Path | None = None
    config: Any = None
    """The model's `ServingConfig` (request limits); the defaults for a bare model folder."""

    @property
    def min_duration_s(self) -> float:
        return float(self.rec.meta.audio.get("min_duration_s", 0.0))


class Resolver:
    """Registry look-ups and downloads (MLFLOW_TRACKING_URI, or --tracking_uri)."""

    def __init__(self, tracking_uri: str | None, deploy_stats: str | None = None):
        self.tracking_uri = tracking_uri
        self.deploy_stats = deploy_stats
        """--deploy_stats: where the deployment statistics are kept (else the model's
        `deploy_stats` serving setting, else in memory)."""

    def _attach(self, loaded: Loaded) -> Loaded:
        """The deployment statistics survive restarts and roll-outs: a new version reading the same
        features continues them; one reading other features starts afresh (and overwrites them)."""
        where = self.deploy_stats or (loaded.config.deploy_stats if loaded.config is not None else "")
        loaded.rec.attach_deployment(where or None, replace_other_features=True)
        return loaded

    def current(self, model_uri: str) -> tuple[str, str]:
        """(concrete URI to load, version label) for `model_uri` now."""
        ref = ModelRef.parse(model_uri)
        if ref is None:
            return model_uri, model_uri
        if ref.alias is None:
            return model_uri, str(ref.version)
        from mlflow import MlflowClient

        mv = MlflowClient(tracking_uri=self.tracking_uri).get_model_version_by_alias(ref.name, ref.alias)
        return f"models:/{ref.name}/{mv.version}", str(mv.version)

    def load(self, uri: str, version: str) -> Loaded:
        """Download into a fresh temp folder and build the recognizer (features inside the model)."""
        from affectflow.contracts.model_folder import is_model_folder
        from affectflow.serving.pyfunc import ServingConfig
        from affectflow.serving.recognizer import Featurizer, load_model_dir

        if is_model_folder(uri):
            rec = load_model_dir(uri)
            return self._attach(Loaded(uri, version, rec, Featurizer(rec.meta), config=ServingConfig()))
        import mlflow

        folder = Path(tempfile.mkdtemp(prefix="affectflow-kserve-"))
        try:
            if self.tracking_uri:
                mlflow.set_tracking_uri(self.tracking_uri)
            model = mlflow.pyfunc.load_model(uri, dst_path=str(folder))
            inner = model.unwrap_python_model()
            rec, featurizer, config = inner.rec, inner.featurizer, inner.config
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._attach(Loaded(uri, version, rec, featurizer, folder, config))


# ----------------------------------------------------------------------------- the v2 request
class RequestError(ValueError):
    """The request is not audio as base64 BYTES; the message names the input and the element."""


def request_audio(inputs: list[Any], config: Any = None, min_duration_s: float = 0.0) -> list[tuple[np.ndarray, int]]:
    """(mono samples, sample rate) per element of the request's BYTES input (InferInput objects),
    under the same rules as the MLflow scoring server: `config`'s max_rows and max_audio_s (a
    `ServingConfig`, defaults when None) and the model's audio.min_duration_s."""
    from affectflow import audio
    from affectflow.serving.pyfunc import ServingConfig, decode_b64

    cfg = config or ServingConfig()
    if not inputs:
        raise RequestError("the request has no inputs; send one BYTES input named 'audio' with base64 audio files")
    chosen = [i for i in inputs if i.name == INPUT_NAME] or (inputs if len(inputs) == 1 else [])
    if not chosen:
        raise RequestError(f"no input named '{INPUT_NAME}' among {[i.name for i in inputs]}")
    inp = chosen[0]
    if inp.datatype != "BYTES":
        raise RequestError(f"input '{inp.name}': datatype is {inp.datatype}, expected BYTES (base64 audio files)")
    data = inp.data
    items = list(np.asarray(data, dtype=object).ravel()) if isinstance(data, list | tuple | np.ndarray) else [data]
    if not items:
        raise RequestError(f"input '{inp.name}': no elements")
    if len(items) > cfg.max_rows:
        raise RequestError(f"input '{inp.name}': {len(items)} elements; this model takes at most {cfg.max_rows} "
                           "per request (model_config max_rows)")
    out, seconds = [], 0.0
    for i, item in enumerate(items):
        where = f"input '{inp.name}' element {i}"
        text = item.decode("ascii", errors="replace") if isinstance(item, bytes | bytearray) else item
        try:
            wave, rate = decode_b64(text, i, budget_s=cfg.max_audio_s - seconds)
            seconds += len(wave) / rate
            if seconds > cfg.max_audio_s:
                raise ValueError(f"the request carries more than {cfg.max_audio_s:g} s of audio; this model takes "
                                 "at most that per request (model_config max_audio_s)")
            audio.check_duration(where, len(wave) / rate, min_duration_s)
        except ValueError as e:
            message = str(e).replace(f"pyfunc input row {i}, column 'audio_b64'", where)
            raise RequestError(message if where in message else f"{where}: {message}") from None
        out.append((wave, rate))
    return out


def score(loaded: Loaded, clips: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """(n, classes) probabilities; clips grouped by sample rate (one resampling per group), reaching
    the deployment statistics in request order (as the MLflow pyfunc scores them), which are then saved."""
    from affectflow.serving.recognizer import predict_audio_groups

    probs = np.zeros((len(clips), len(loaded.rec.classes)), np.float32)
    rates = sorted({r for _, r in clips})
    index = [[i for i, (_, r) in enumerate(clips) if r == rate] for rate in rates]
    groups = [([clips[i][0] for i in idx], rate) for idx, rate in zip(index, rates, strict=True)]
    for idx, p in zip(index, predict_audio_groups(loaded.rec, groups, loaded.featurizer, order=index), strict=True):
        probs[idx] = p
    loaded.rec.deployment.save()
    return probs


def make_model(name: str, model_uri: str, reload_interval_s: float, resolver: Resolver) -> Any:
    """The kserve.Model (built here so importing this module does not need the SDK)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class RecognizerModel(kserve.Model):  # type: ignore[misc]
        """The recognizer as a KServe model, re-resolving its registry alias in the background."""

        def __init__(self) -> None:
            super().__init__(name)
            self.model_uri = model_uri
            self.reload_interval_s = reload_interval_s
            self.current: Loaded | None = None
            self._lock = threading.Lock()
            self._stop = threading.Event()

        def load(self) -> bool:
            uri, version = resolver.current(self.model_uri)
            self.current = resolver.load(uri, version)
            log.info("loaded %s (version %s) for %s", uri, version, self.model_uri)
            self.ready = True
            if self.reload_interval_s > 0 and ModelRef.parse(self.model_uri) and ModelRef.parse(self.model_uri).alias:
                threading.Thread(target=self._watch, name="alias-watch", daemon=True).start()
            return self.ready

        def refresh(self) -> bool:
            """Load the alias's version if it moved; True when a new version was swapped in."""
            uri, version = resolver.current(self.model_uri)
            if self.current is not None and version == self.current.version:
                return False
            new = resolver.load(uri, version)
            with self._lock:
                old, self.current = self.current, new
            log.warning("%s now points at version %s (was %s): rolled out", self.model_uri, version,
                        old.version if old else None)
            if old is not None and old.folder is not None:
                shutil.rmtree(old.folder, ignore_errors=True)
            return True

        def _watch(self) -> None:
            while not self._stop.wait(self.reload_interval_s):
                try:
                    self.refresh()
                except Exception as e:  # keep serving the loaded version; say why the reload failed
                    log.error("reloading %s failed, keeping version %s: %s", self.model_uri,
                              self.current.version if self.current else None, e)

        def stop(self) -> None:
            self._stop.set()
            super().stop()

        async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse:
            if not isinstance(payload, InferRequest):
                raise InvalidInput("expected an Open Inference Protocol (v2) request: "
                                   "POST /v2/models/<name>/infer with {\"inputs\": [...]}")
            with self._lock:
                loaded = self.current
            assert loaded is not None
            try:
                clips = request_audio(list(payload.inputs), loaded.config, loaded.min_duration_s)
            except RequestError as e:
                raise InvalidInput(str(e)) from None
            try:
                probs = await asyncio.to_thread(score, loaded, clips)
            except Exception as e:  # the traceback stays in the server log, the client gets a short reason
                log.exception("scoring a request on %s failed", loaded.uri)
                raise RuntimeError(f"internal error while scoring the request ({type(e).__name__}; "
                                   "see the server log)") from None
            classes = loaded.rec.classes
            labels = [classes[i] for i in probs.argmax(axis=1)]
            outputs = [
                InferOutput(PROBABILITIES, list(probs.shape), "FP32", probs.ravel().tolist(),
                            parameters={"classes": ",".join(classes)}),
                InferOutput(LABEL, [len(labels)], "BYTES", labels),
            ]
            return InferResponse(payload.id, self.name, outputs, model_version=loaded.version)

    return RecognizerModel()


def parser() -> argparse.ArgumentParser:
    """KServe ModelServer's flags (--http_port, --grpc_port, --model_name, ...) plus ours."""
    from kserve import model_server

    p = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.splitlines()[0])
    p.add_argument("--model_uri", default=DEFAULT_MODEL_URI,
                   help="models:/<name>@<alias> (re-resolved), models:/<name>/<version>, or any MLflow model URI")
    p.add_argument("--reload_interval_s", type=float, default=DEFAULT_RELOAD_S,
                   help="seconds between alias look-ups; 0 = never re-resolve")
    p.add_argument("--tracking_uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--deploy_stats", default=None,
                   help="JSON path or s3:// URI of this deployment's running statistics of unknown-corpus audio "
                        "(written after every request; default: the model's deploy_stats setting, else in memory)")
    return p


def main(argv: list[str] | None = None) -> None:
    import kserve

    args, _ = parser().parse_known_args(argv)
    if args.reload_interval_s < 0:
        raise SystemExit(f"--reload_interval_s: {args.reload_interval_s} is negative (0 = never re-resolve)")
    started = time.monotonic()
    model = make_model(args.model_name, args.model_uri, args.reload_interval_s, Resolver(args.tracking_uri, args.deploy_stats))
    model.load()
    log.info("model %s ready in %.1f s", args.model_name, time.monotonic() - started)
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()
