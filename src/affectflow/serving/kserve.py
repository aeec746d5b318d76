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

Response: `probabilities` (FP32, [n, classes], class order in its `classes` parameter), `label`
(BYTES, [n]) and `status` (BYTES, [n]): `ok`, or `no_speech` for a clip with less than the model's
`audio.min_speech_s` of speech (`affectflow.speech`), whose probabilities are all 0 and label is
empty: a valid but silent clip is an answer (HTTP 200), never an emotion. `model_version` is the
registry version that answered; `id` echoes the request's, or is a fresh UUID when the request has
none (`id` is optional in the protocol). `GET /v2/models/<model_name>` lists that input and those
outputs (`metadata_tensors`). With request parameters `{"timeline": true}` (optional `window_s`,
`hop_s`, `smooth`) and one recording, the answer is its timeline (`affectflow.serving.timeline`):
`start_s`, `end_s`, `probabilities`, `label` and `status` per segment (a segment without the
model's minimum of speech: `no_speech`, probabilities all 0, label "", as for a clip). A model with a
dimensional head adds `dimensions` (FP32, [n or segments, dimensions], names in its `dimensions`
parameter, e.g. "arousal,valence"; all 0 where there is no speech) to both answers. A request that is not that
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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affectflow.serving.http_limits import (
    DEFAULT_MAX_BODY_MB,
    DEFAULT_MAX_JSON_DEPTH,
    install_request_limits,
)
from affectflow.speech import STATUS_NO_SPEECH, STATUS_OK, SpeechCheck

log = logging.getLogger("affectflow.serving.kserve")

INPUT_NAME = "audio"
PROBABILITIES = "probabilities"
LABEL = "label"
STATUS = "status"
DIMENSIONS = "dimensions"
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

    @property
    def speech(self) -> Any:
        """The model's speech check (its audio.min_speech_s; `affectflow.speech`)."""
        from affectflow.speech import SpeechCheck

        return SpeechCheck.from_audio_config(self.rec.meta.audio)


class Resolver:
    """Registry look-ups and downloads (MLFLOW_TRACKING_URI, or --tracking_uri)."""

    def __init__(self, tracking_uri: str | None, deploy_stats: str | None = None, prediction_log: str | None = None):
        self.tracking_uri = tracking_uri
        self.deploy_stats = deploy_stats
        self.prediction_log = prediction_log
        """--prediction_log: where each request row is logged (else the model's serving setting, else nowhere)."""
        """--deploy_stats: where the deployment statistics are kept (else the model's
        `deploy_stats` serving setting, else in memory)."""

    def _attach(self, loaded: Loaded) -> Loaded:
        """The deployment statistics survive restarts and roll-outs: a new version reading the same
        features continues them; one reading other features starts afresh (and overwrites them)."""
        where = self.deploy_stats or (loaded.config.deploy_stats if loaded.config is not None else "")
        loaded.rec.attach_deployment(where or None, replace_other_features=True)
        from affectflow.serving.prediction_log import attach_server_log

        config = loaded.config
        attach_server_log(loaded.rec, self.prediction_log or (config.prediction_log if config is not None else ""),
                          bool(config is not None and config.keep_audio), "kserve", f"{loaded.uri}")
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
    inp, items = the_audio_input(inputs)
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


def the_audio_input(inputs: list[Any]) -> tuple[Any, list[Any]]:
    """The request's one input and its elements, held to the documented contract: exactly one
    input, named `audio`, datatype BYTES, shape [n] for its n elements (one file each). Anything
    else is a RequestError (HTTP 400), not a guess at what the client meant."""
    names = [str(i.name) for i in inputs]
    if INPUT_NAME not in names:
        raise RequestError(f"no input named '{INPUT_NAME}' among {names}; send one BYTES input named "
                           f"'{INPUT_NAME}' with base64 audio files")
    if len(inputs) > 1:
        raise RequestError(f"inputs {[n for n in names if n != INPUT_NAME]} are not this model's; it takes one "
                           f"input, '{INPUT_NAME}'")
    inp = inputs[0]
    if inp.datatype != "BYTES":
        raise RequestError(f"input '{inp.name}': datatype is {inp.datatype}, expected BYTES (base64 audio files)")
    data = inp.data
    items = list(np.asarray(data, dtype=object).ravel()) if isinstance(data, list | tuple | np.ndarray) else [data]
    if not items:
        raise RequestError(f"input '{inp.name}': no elements")
    shape = [int(x) for x in (getattr(inp, "shape", None) or [len(items)])]
    if shape != [len(items)]:
        raise RequestError(f"input '{inp.name}': shape {shape} does not fit its {len(items)} element(s); expected "
                           f"[{len(items)}], one base64 audio file per element")
    return inp, items


def score(loaded: Loaded, clips: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """(n, classes) probabilities of every clip (no speech check; see `score_request`)."""
    return score_request(loaded, clips, check=SpeechCheck.off())[0]


def score_request(loaded: Loaded, clips: list[tuple[np.ndarray, int]],
                  check: Any = None) -> tuple[np.ndarray, list[bool]]:
    """(n, classes) probabilities and, per clip, whether it had speech (`score_request_all`'s classes)."""
    rows, speech = score_request_all(loaded, clips, check)
    return rows[:, : len(loaded.rec.classes)], speech


def score_request_all(loaded: Loaded, clips: list[tuple[np.ndarray, int]],
                      check: Any = None) -> tuple[np.ndarray, list[bool]]:
    """(n, classes) probabilities and, per clip, whether it had speech: scored as the MLflow pyfunc
    and `affectflow predict` score (`pyfunc.score_windows`: long clips in windows, windows without
    the model's minimum of speech left out, clips reaching the deployment statistics in request
    order). Clips without speech keep
    all-0 rows. NaN features are the request's error naming the element."""
    from affectflow.serving.pyfunc import ServingConfig, score_windows_all
    from affectflow.serving.recognizer import NonFiniteFeatures

    rates = sorted({r for _, r in clips})
    groups = [([i for i, (_, r) in enumerate(clips) if r == rate], [w for w, r in clips if r == rate], rate)
              for rate in rates]
    config = loaded.config or ServingConfig()
    try:
        probs, scored = score_windows_all(loaded.rec, loaded.featurizer, groups,
                                          loaded.speech if check is None else check, *config.windows())
    except NonFiniteFeatures as e:
        raise RequestError(f"input element {e.item}: {e}") from None
    loaded.rec.deployment.save()  # the deployment statistics, after the request's clips in request order
    speech = [False] * len(clips)
    for i in scored:
        speech[i] = True
    return probs, speech


def response_outputs(probs: np.ndarray, speech: list[bool], classes: list[str]) -> list[tuple[str, list[int], str, list[Any]]]:
    """(name, shape, datatype, data) of the three outputs: probabilities, label, status."""
    labels = [classes[i] if ok else "" for i, ok in zip(probs.argmax(axis=1), speech, strict=True)]
    status = [STATUS_OK if ok else STATUS_NO_SPEECH for ok in speech]
    return [(PROBABILITIES, list(probs.shape), "FP32", probs.ravel().tolist()),
            (LABEL, [len(labels)], "BYTES", labels),
            (STATUS, [len(status)], "BYTES", status)]


def metadata_tensors(n_classes: int | None, n_dimensions: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of the v2 model metadata: what a client must send and gets back
    (-1: any number of clips; the class count once a model is loaded)."""
    inputs = [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, n_classes if n_classes else -1]},
               {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
               {"name": STATUS, "datatype": "BYTES", "shape": [-1]}]
    if n_dimensions:  # a model with a dimensional head
        outputs.append({"name": DIMENSIONS, "datatype": "FP32", "shape": [-1, n_dimensions]})
    return inputs, outputs


def _input_types(model: Any) -> list[dict[str, Any]]:
    """kserve.Model.get_input_types of the predictor (`/v2/models/<name>` metadata)."""
    return metadata_tensors(None)[0]


def _output_types(model: Any) -> list[dict[str, Any]]:
    """kserve.Model.get_output_types: the loaded model's class count in the probabilities' shape."""
    loaded = model.current
    if loaded is None:
        return metadata_tensors(None)[1]
    from affectflow.serving.pyfunc import dimension_names

    return metadata_tensors(len(loaded.rec.classes), len(dimension_names(loaded.rec)))[1]


def response_id(request_id: str | None) -> str:
    """The v2 response id: the request's, else a fresh one (the protocol makes the request's optional)."""
    return request_id if request_id else str(uuid.uuid4())


def score_timeline_clip(loaded: Loaded, clip: tuple[np.ndarray, int], settings: Any) -> Any:
    """The served timeline option (`affectflow.serving.timeline`) on one recording of a request."""
    from affectflow.serving.pyfunc import dimension_names
    from affectflow.serving.recognizer import predict_audio_group_scores
    from affectflow.serving.timeline import score_timeline

    rec = loaded.rec
    return score_timeline(clip, lambda waves: predict_audio_group_scores(rec, [(waves, None)], loaded.featurizer)[0].stacked(),
                          rec.classes, rec.meta.sample_rate, settings, name="input 'audio' element 0",
                          speech=loaded.speech, dimensions=dimension_names(rec))


def respond(loaded: Loaded, clips: list[tuple[np.ndarray, int]], timeline: Any, output: Any) -> list[Any]:
    """The response's outputs (`output`: kserve's InferOutput): probabilities, label and status per
    clip (`response_outputs`), or the timeline of the one recording when the request asked for it."""
    if timeline is not None:
        return timeline_outputs(score_timeline_clip(loaded, clips[0], timeline), output)
    from affectflow.serving.pyfunc import dimension_names

    rows, speech = score_request_all(loaded, clips)
    classes = loaded.rec.classes
    probs = rows[:, : len(classes)]
    outs = [output(name, shape, dtype, data,
                   parameters={"classes": ",".join(classes)} if name == PROBABILITIES else None)
            for name, shape, dtype, data in response_outputs(probs, speech, classes)]
    names = dimension_names(loaded.rec)
    if names:
        outs.append(dimensions_output(rows[:, len(classes):], speech, names, output))
    return outs


def dimensions_output(dims: np.ndarray, speech: Any, names: list[str], output: Any) -> Any:
    """The `dimensions` output: FP32 [n, dimensions] (0 where there is no speech), names in its parameter."""
    d = np.asarray(dims, np.float32) * np.asarray(speech, bool)[:, None]
    return output(DIMENSIONS, list(d.shape), "FP32", d.ravel().tolist(), parameters={DIMENSIONS: ",".join(names)})


async def respond_off_loop(loaded: Loaded, clips: list[tuple[np.ndarray, int]], timeline: Any,
                           output: Any) -> list[Any]:
    """`respond` in a worker thread; the client's faults stay RequestError, any other failure is a
    RuntimeError whose text holds no traceback (that stays in the server log)."""
    try:
        return await asyncio.to_thread(respond, loaded, clips, timeline, output)
    except RequestError:
        raise
    except Exception as e:
        log.exception("scoring a request on %s failed", loaded.uri)
        raise RuntimeError(f"internal error while scoring the request ({type(e).__name__}; "
                           "see the server log)") from None


def timeline_outputs(t: Any, output: Any) -> list[Any]:
    """start_s, end_s (FP32 [segments]), probabilities (FP32 [segments, classes]), label and status
    (BYTES [segments]); a segment without speech is as a clip without speech in `response_outputs`:
    status `no_speech`, probabilities all 0, label ""."""
    lo, hi = t.cells()
    probs = np.asarray(t.probabilities, np.float32) * t.has_speech[:, None]
    return [output("start_s", [len(lo)], "FP32", lo.astype(np.float32).tolist()),
            output("end_s", [len(hi)], "FP32", hi.astype(np.float32).tolist()),
            output(PROBABILITIES, list(probs.shape), "FP32", probs.ravel().tolist(),
                   parameters={"classes": ",".join(t.classes), "window_s": t.settings.window_s,
                               "hop_s": t.settings.hop_s, "smooth": t.settings.smooth}),
            output(LABEL, [len(lo)], "BYTES", [lab or "" for lab in t.labels]),
            output(STATUS, [len(lo)], "BYTES", t.statuses),
            *([dimensions_output(t.dimensions, t.has_speech, t.dimension_names, output)]
              if t.dimensions is not None and t.dimension_names else [])]


def make_model(name: str, model_uri: str, reload_interval_s: float, resolver: Resolver) -> Any:
    """The kserve.Model (built here so importing this module does not need the SDK)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    from affectflow.serving.timeline import requested_settings

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

        get_input_types = _input_types
        get_output_types = _output_types

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
                timeline = requested_settings(payload.parameters, len(clips))  # the served timeline option
            except ValueError as e:  # RequestError included
                raise InvalidInput(str(e)) from None
            try:
                outputs = await respond_off_loop(loaded, clips, timeline, InferOutput)
            except RequestError as e:  # e.g. non-finite features of an element
                raise InvalidInput(str(e)) from None
            return InferResponse(response_id(payload.id), self.name, outputs, model_version=loaded.version)

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
    p.add_argument("--prediction_log", default=None,
                   help="folder or s3:// prefix of the prediction log (one record per request row, read by "
                        "affectflow monitor; default: the model's prediction_log setting, else no log)")
    p.add_argument("--max_body_mb", type=float, default=DEFAULT_MAX_BODY_MB,
                   help="largest request body in MiB (larger: HTTP 413)")
    p.add_argument("--max_json_depth", type=int, default=DEFAULT_MAX_JSON_DEPTH,
                   help="deepest JSON nesting of a request (deeper: HTTP 400)")
    return p


def main(argv: list[str] | None = None) -> None:
    import kserve

    args, _ = parser().parse_known_args(argv)
    if args.reload_interval_s < 0:
        raise SystemExit(f"--reload_interval_s: {args.reload_interval_s} is negative (0 = never re-resolve)")
    started = time.monotonic()
    model = make_model(args.model_name, args.model_uri, args.reload_interval_s, Resolver(args.tracking_uri, args.deploy_stats,
                                                                                  args.prediction_log))
    model.load()
    log.info("model %s ready in %.1f s", args.model_name, time.monotonic() - started)
    from kserve import model_server

    install_request_limits(model_server.app, args.max_body_mb, args.max_json_depth)
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()
