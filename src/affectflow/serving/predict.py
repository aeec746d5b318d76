"""Prediction on new audio: files, folders or manifests in, class probabilities per file out.

The model is any MLflow model URI (default `models:/<registry.model_name>@champion` on
`tracking.uri`) or a local model folder. For the affectflow pyfunc the recognizer inside it is used
directly (`affectflow.serving.recognizer`: the same feature extraction and normalisation as training), so
clips can be batched across files and put on the GPU; any other pyfunc with the same contract
(`audio` + `sample_rate` columns in, one probability column per class out) is called through
`predict`.

Why windows: a clip longer than `predict.max_window_s` is never decoded whole. Its windows
(`max_window_s` long, `hop_s` apart, the last one ending at the clip's end) are read from the file
one at a time, scored like short clips, and the clip's probabilities are the mean over its windows;
memory is bounded by `batch_size` windows whatever the file length.

Why "no speech": a window with less than `audio.min_speech_s` of speech (`affectflow.speech`,
Silero VAD) is not scored, and a file none of whose windows has speech gets status `no_speech`,
no label and no probabilities (not an error: the exit code is 0); silence, noise or music would
otherwise get a confident emotion.

Why per-file errors: one unreadable file in a folder of thousands should cost that file, not the
run. Every failure (missing, undecodable, empty, truncated, NaN samples, shorter than
`audio.min_duration_s`, a clip the model cannot take) is recorded in the output with its reason and
reported on stderr; the others are still predicted. The audio rules and their texts are ingest's
(`affectflow.audio`), so a clip ingest would quarantine is not silently predicted.

Why s3:// inputs are downloaded first: soundfile reads local files only, and seeking through a long
file window by window over HTTP would cost a request per window. An `s3://` object or prefix (and an
`s3://` row of a manifest) is fetched into a temporary folder for the run, in parallel
(`s3.max_concurrency`), and removed afterwards; the output keeps the URI as the row's path. A missing
object is that input's error, as a missing local file is; rejected credentials or an unreachable
endpoint stop the run, since every S3 input would fail the same way.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import pandas as pd
import soundfile as sf

from affectflow import audio
from affectflow.config import LogMelConfig, Params
from affectflow.contracts.model_folder import ModelMeta, is_model_folder
from affectflow.corpora import AUDIO_EXTENSIONS, audio_files
from affectflow.corpora.csv_manifest import unsupported_scheme
from affectflow.runtime.device import resolve_device
from affectflow.runtime.progress import progress
from affectflow.serving.predict_log import attach_predict_log
from affectflow.serving.prediction_log import record_files
from affectflow.serving.recognizer import Featurizer, load_model_dir, predict_features
from affectflow.speech import STATUS_NO_SPEECH, STATUS_OK, SpeechCheck
from affectflow.storage import atomic_write_text
from affectflow.storage.s3 import SCHEME, S3NotFoundError, S3Store, S3Uri, is_s3, store_for
from affectflow.tracking.uri import local_sqlite, mlflow_scope, resolve_uri

MANIFEST_SUFFIXES = (".csv", ".parquet")
FORMATS = ("json", "csv")
CHAMPION_ALIAS = "champion"
PROB_DECIMALS = 6
"""Digits kept for probabilities in the output (float32 models: more would be noise)."""


class PredictInputError(ValueError):
    """An input argument that cannot be used at all (empty folder, manifest without `path`)."""


# ----------------------------------------------------------------------------- inputs
def manifest_paths(path: Path) -> list[str]:
    """Audio paths of a manifest (.csv or .parquet with a `path` column); relative paths resolve
    against the manifest's folder, like the `csv` corpus adapter does."""
    is_csv = path.suffix.lower() == ".csv"
    if is_csv:
        _check_utf8(path)
    try:
        df = pd.read_csv(path) if is_csv else pd.read_parquet(path)
    except Exception as e:  # pandas / pyarrow raise many kinds for a bad file
        raise PredictInputError(f"{path}: cannot read manifest ({e})") from None
    if "path" not in df.columns:
        raise PredictInputError(f"{path}: manifest has no 'path' column (has {list(df.columns)})")
    out = []
    for row, value in enumerate(df["path"]):
        if not isinstance(value, str) or not value.strip():
            raise PredictInputError(f"{path}: row {row}: field 'path' is empty")
        if bad := unsupported_scheme(value):
            raise PredictInputError(f"{path}: row {row}: field 'path': {bad}")
        p = Path(value)
        out.append(value if p.is_absolute() or "://" in value else str(path.parent / p))
    return out


def _check_utf8(path: Path) -> None:
    """A CSV with bytes that are not UTF-8 is refused naming its line and field, not a codec position."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PredictInputError(f"{path}: cannot read manifest ({e.strerror})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = data[data.rfind(b"\n", 0, e.start) + 1 : e.start].count(b",")  # unquoted CSV: close enough
        header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
        field = f", field '{header[column].strip()}'" if line > 1 and column < len(header) else ""
        raise PredictInputError(f"{path}: line {line}{field}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                                "save the CSV as UTF-8") from None


def _is_audio_name(name: str) -> bool:
    """The rule of `affectflow.corpora.audio_files`: an audio suffix, not hidden (`._x.wav` forks)."""
    return Path(name).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")


def s3_inputs(uri: str, store: S3Store) -> list[str]:
    """An s3:// argument as object URIs: the object itself, else the audio objects under it as a
    prefix (sorted by key). A URI with neither is returned as is: it fails as a missing file when
    fetched, naming the bucket and key."""
    u = S3Uri.parse(uri)
    if Path(u.key).suffix.lower() in MANIFEST_SUFFIXES:
        raise PredictInputError(f"{uri}: manifests are read from local files only; download it "
                                "(its s3:// rows are fetched) or pass the prefix holding the audio")
    try:
        listed = store.list(uri)
    except S3NotFoundError:  # no bucket: the fetch reports it for this input
        return [uri]
    if u.key and not u.key.endswith("/") and any(o.key == u.key for o in listed):
        return [uri]
    under = [o.key for o in listed if o.key.startswith(u.prefix)]
    if not under:
        return [uri]
    found = [f"{SCHEME}{u.bucket}/{key}" for key in under if _is_audio_name(PurePosixPath(key).name)]
    if not found:
        raise PredictInputError(f"{uri}: prefix holds no audio objects ({' '.join(AUDIO_EXTENSIONS)})")
    return found


def collect_inputs(paths: Sequence[str | Path], store: S3Store | None = None) -> list[str]:
    """Expand the PATH arguments: folders recursively (audio suffixes of `affectflow.corpora`),
    s3:// prefixes to their audio objects (`store`, default: endpoint and credentials from the
    environment), manifests to their `path` column, anything else as one file (a missing file
    becomes a per-file error later, not a failure of the whole run)."""
    out: list[str] = []
    for arg in paths:
        if is_s3(arg):
            out.extend(s3_inputs(str(arg), store or S3Store()))
            continue
        if bad := unsupported_scheme(str(arg)):
            raise PredictInputError(f"{arg}: {bad}")
        p = Path(arg)
        if p.is_dir():
            found = audio_files(p)
            if not found:
                raise PredictInputError(f"{p}: folder holds no audio files ({' '.join(AUDIO_EXTENSIONS)})")
            out.extend(str(f) for f in found)
        elif p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            out.extend(manifest_paths(p))
        else:
            out.append(str(p))
    if not out:
        raise PredictInputError("no input paths given")
    return out


# ----------------------------------------------------------------------------- windows
window_spans = audio.window_spans  # the spans live in affectflow.audio: the servers cut the same windows


@dataclass
class Decoded:
    """A decoded input: its native duration and a lazy source of model-rate windows; a window
    without `audio.min_speech_s` of speech comes as its "no speech" reason (a str), not scored."""

    duration_s: float
    n_windows: int
    windows: Callable[[], Iterator[np.ndarray | str]]


def _checked(x: np.ndarray, path: str, what: str) -> np.ndarray:
    x = audio.to_mono(np.asarray(x, np.float32))
    if x.size == 0:
        raise audio.AudioError(path, f"{what}: {audio.NO_SAMPLES}")
    if not np.isfinite(x).all():
        raise audio.AudioError(path, f"{what}: {audio.NOT_FINITE}")
    return audio.check_range(x, f"{path} ({what})")


class WindowReader:
    """Opens one input and yields its windows at the model's rate.

    The audio rules are ingest's (`affectflow.audio`: missing, unreadable, empty, truncated,
    non-finite, shorter than `min_duration_s`), in the same words."""

    def __init__(self, sample_rate: int, max_window_s: float, hop_s: float, min_duration_s: float = 0.0,
                 speech: SpeechCheck | None = None):
        if hop_s > max_window_s:
            raise ValueError(f"predict.hop_s: {hop_s} must not exceed predict.max_window_s ({max_window_s}); "
                             "parts of long clips would never be scored")
        self.sample_rate = sample_rate
        self.max_window_s = max_window_s
        self.hop_s = hop_s
        self.min_duration_s = min_duration_s
        self.speech = speech or SpeechCheck.off()

    def _speech(self, wave: np.ndarray) -> np.ndarray | str:
        """The window, or why it is not scored (too little speech)."""
        return self.speech.reason(wave, self.sample_rate) or wave

    def open(self, path: str) -> Decoded:
        """Short clips are decoded here (in a worker thread); long ones only get their plan."""
        head = audio.check_header(path)
        audio.check_duration(path, head.duration, self.min_duration_s)
        window = max(1, round(self.max_window_s * head.sample_rate))
        spans = window_spans(head.frames, window, max(1, round(self.hop_s * head.sample_rate)))
        if len(spans) == 1:
            x, rate = audio.decode(path)
            audio.check_decoded(path, len(x), head.frames)
            audio.check_duration(path, len(x) / rate, self.min_duration_s)
            wave = self._speech(audio.resample(x, rate, self.sample_rate))  # in the decode thread
            return Decoded(head.duration, 1, lambda: iter([wave]))
        return Decoded(head.duration, len(spans), lambda: self._stream(path, head, spans))

    def _stream(self, path: str, head: audio.AudioInfo, spans: list[tuple[int, int]]) -> Iterator[np.ndarray | str]:
        """One window in memory at a time (seek + read), each resampled on its own."""
        rate = head.sample_rate
        try:
            f = sf.SoundFile(path)
        except Exception as e:  # LibsndfileError and friends
            raise audio.AudioError(path, f"cannot decode audio ({e})") from None
        with f:
            for k, (start, stop) in enumerate(spans):
                try:
                    f.seek(start)
                    x = f.read(stop - start, dtype="float32", always_2d=False)
                except Exception as e:
                    raise audio.AudioError(path, f"window {k} at {start / rate:.1f} s: cannot decode ({e})") from None
                if len(x) < stop - start:  # the file ends before its header says
                    audio.check_decoded(path, start + len(x), head.frames)
                x = _checked(x, path, f"window {k} at {start / rate:.1f} s")
                yield self._speech(audio.resample(x, rate, self.sample_rate))


# ----------------------------------------------------------------------------- models
class Backend(Protocol):
    """What prediction needs from a model: its classes, its audio rate, waveforms -> (n, C)."""

    uri: str
    classes: list[str]
    sample_rate: int

    def predict(self, waves: list[np.ndarray]) -> np.ndarray: ...


class DeviceFeaturizer(Featurizer):
    """The model's featurizer with log-mel computed on the model's device (same class, same
    configuration; `affectflow.serving.recognizer.Featurizer` always uses the CPU)."""

    def __init__(self, meta: ModelMeta, device: Any):
        super().__init__(meta)
        self.device = device

    def _logmel(self) -> Any:
        from affectflow.features.logmel import LogMel

        return LogMel(LogMelConfig.model_validate(self.config), self.sample_rate, self.device)


class RecognizerBackend:
    """An affectflow recognizer (from a model folder or unwrapped from its pyfunc) on a device."""

    def __init__(self, uri: str, rec: Any, device: Any, batch_size: int):
        rec.model.to(device)
        rec.device = device
        self.uri = uri
        self.rec = rec
        self.classes = rec.classes
        self.batch_size = batch_size
        self.featurizer = DeviceFeaturizer(rec.meta, device)
        self.sample_rate = self.featurizer.sample_rate

    def featurize(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return self.featurizer(waves)

    def score(self, features: list[np.ndarray]) -> np.ndarray:
        """Unknown-corpus features standardised by the deployment statistics, in order."""
        return predict_features(self.rec, features, self.batch_size)

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
        self.classes = [c for c in names if c != "label"]
        if not self.classes:
            raise RuntimeError(f"model {uri}: its signature names no output (class) columns")

    def predict(self, waves: list[np.ndarray]) -> np.ndarray:
        df = pd.DataFrame({"audio": [w.astype(np.float64) for w in waves],
                           "sample_rate": [self.sample_rate] * len(waves)})
        out = self.model.predict(df)
        return np.asarray(pd.DataFrame(out)[self.classes], np.float32)


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


# ----------------------------------------------------------------------------- prediction
@dataclass
class FilePrediction:
    """One input's outcome: mean window probabilities, or the reason it failed."""

    path: str
    duration_s: float | None = None
    windows: int = 0
    error: str | None = None
    no_speech: str | None = None
    """Why no window of the file was scored (too little speech); the file then has no label."""
    speech_windows: int = 0
    _sum: np.ndarray | None = field(default=None, repr=False)
    _seen: int = field(default=0, repr=False)

    def add(self, probs: np.ndarray) -> None:
        self._sum = probs.astype(np.float64) if self._sum is None else self._sum + probs
        self._seen += 1

    @property
    def probabilities(self) -> np.ndarray | None:
        if self.error is not None or self._sum is None:
            return None
        return self._sum / self._seen

    @property
    def status(self) -> str:
        """`ok` (probabilities), `no_speech` (no emotion: nothing to judge) or `error`."""
        return "error" if self.error is not None else STATUS_NO_SPEECH if self.no_speech is not None else STATUS_OK


@dataclass
class PredictResult:
    model_uri: str
    classes: list[str]
    predictions: list[FilePrediction]

    @property
    def failed(self) -> list[FilePrediction]:
        return [p for p in self.predictions if p.error is not None]

    @property
    def without_speech(self) -> list[FilePrediction]:
        return [p for p in self.predictions if p.status == STATUS_NO_SPEECH]

    def records(self) -> list[dict[str, Any]]:
        """One flat record per input: path, status, label, one column per class, duration, windows, error
        (for `no_speech` the reason; label and probabilities are empty: no emotion without speech)."""
        out = []
        for p in self.predictions:
            probs = p.probabilities
            rec: dict[str, Any] = {"path": p.path, "status": p.status,
                                   "label": None if probs is None else self.classes[int(np.argmax(probs))]}
            for c, i in zip(self.classes, range(len(self.classes)), strict=True):
                rec[c] = None if probs is None else round(float(probs[i]), PROB_DECIMALS)
            rec.update({"duration_s": None if p.duration_s is None else round(p.duration_s, 3),
                        "windows": p.windows, "error": p.error or p.no_speech})
            out.append(rec)
        return out

    def to_json(self) -> dict[str, Any]:
        preds = []
        for r in self.records():
            probs = {c: r.pop(c) for c in self.classes}
            preds.append({**r, "probabilities": probs if r["status"] == "ok" else None})
        return {"model": self.model_uri, "classes": self.classes, "n_files": len(self.predictions),
                "n_failed": len(self.failed), "n_no_speech": len(self.without_speech), "predictions": preds}

    def to_csv(self) -> str:
        buf = io.StringIO()
        cols = ["path", "status", "label", *self.classes, "duration_s", "windows", "error"]
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for r in self.records():
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        return buf.getvalue()


def _reason(e: BaseException) -> str:
    if isinstance(e, audio.AudioError):
        return e.reason
    return f"{type(e).__name__}: {e}"


class _Batcher:
    """Collects windows of several files into model batches and credits each result to its file.

    Windows are scored in input order (files in order, a file's windows in order): the deployment
    statistics see them as if they came one by one, so the batch size changes no result."""

    def __init__(self, backend: Backend, results: list[FilePrediction], batch_size: int,
                 say: Callable[[str], None]):
        self.backend = backend
        self.results = results
        self.batch_size = batch_size
        self.say = say
        self.pending: list[tuple[int, np.ndarray]] = []
        self.window_files: list[int] = []
        """The file of each window scored, in order (the prediction log's `record_files`)."""

    def add(self, index: int, wave: np.ndarray) -> None:
        self.pending.append((index, wave))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch = [(i, w) for i, w in self.pending if self.results[i].error is None]
        self.pending = []
        if not batch:
            return
        try:
            probs = self._predict([w for _, w in batch])
        except Exception:
            probs = self._one_by_one(batch, self._predict)
        for (i, _), p in zip(batch, probs, strict=True):
            self._credit(i, p)

    def _credit(self, i: int, p: np.ndarray | None) -> None:
        """Add a window's probabilities to its file; non-finite ones fail the file (never NaN out)."""
        if p is None:
            return
        self.window_files.append(i)
        if not np.isfinite(p).all():
            fail(self.results[i], "the model returned non-finite probabilities for this audio", self.say)
            return
        self.results[i].add(p)

    def _predict(self, waves: list[np.ndarray]) -> np.ndarray:
        """Features first (a clip the model cannot take fails here, before the deployment
        statistics have seen it), then the scores."""
        featurize = getattr(self.backend, "featurize", None)
        if featurize is None:
            return self.backend.predict(waves)
        return self.backend.score(featurize(waves))  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.flush()

    def _one_by_one(self, batch: list[tuple[int, np.ndarray]], fn: Callable[[list[np.ndarray]], Any]) -> list[Any]:
        """`fn` clip by clip, to find the clip(s) the model cannot take (failed, None); when every
        clip fails the fault is the model's, and it is raised."""
        outcomes: list[Any] = []
        for _, w in batch:
            try:
                outcomes.append(fn([w])[0])
            except Exception as e:
                outcomes.append(e)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(batch) > 1 and len(errors) == len(batch):
            raise errors[0]
        for (i, _), got in zip(batch, outcomes, strict=True):
            if isinstance(got, BaseException):
                fail(self.results[i], f"model cannot score this audio ({_reason(got)})", self.say)
        return [None if isinstance(o, BaseException) else o for o in outcomes]


def fail(res: FilePrediction, reason: str, say: Callable[[str], None]) -> None:
    """Record a file's first failure and report it once."""
    if res.error is None:
        res.error = reason
        say(f"error: {res.path}: {reason}")


def _decode_ahead(reader: WindowReader, paths: Sequence[str], workers: int,
                  lookahead: int) -> Iterator[tuple[int, Decoded | BaseException]]:
    """Decode upcoming inputs in threads (soundfile and soxr release the GIL), in input order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        queue: deque[Future[Decoded]] = deque()
        nxt = 0
        for i in range(len(paths)):
            while nxt < len(paths) and len(queue) < lookahead:
                queue.append(pool.submit(reader.open, paths[nxt]))
                nxt += 1
            fut = queue.popleft()
            try:
                yield i, fut.result()
            except Exception as e:
                yield i, e


@contextlib.contextmanager
def fetched(files: Sequence[str], store: S3Store) -> Iterator[tuple[list[str], dict[int, str]]]:
    """Local paths for `files` (s3:// objects downloaded into a temporary folder, removed on exit;
    others unchanged) and the reason per index of those that could not be fetched.

    Only a missing object (or bucket) or a malformed URI is an input's own error; any other S3
    failure (credentials, endpoint) is raised, since it would fail every S3 input alike."""
    local, errors = list(files), {}
    remote = [i for i, f in enumerate(files) if is_s3(f)]
    if not remote:
        yield local, errors
        return
    with tempfile.TemporaryDirectory(prefix="affectflow-predict-") as tmp:

        def fetch(i: int) -> str | Exception:
            # One folder per input: names repeat across prefixes, and a key such as "a/../../x"
            # must not write outside the temporary folder. The name keeps the audio suffix.
            try:
                name = PurePosixPath(S3Uri.parse(files[i]).key).name or "object"
                return str(store.download(files[i], Path(tmp) / str(i) / name))
            except (S3NotFoundError, ValueError) as e:
                return e

        with ThreadPoolExecutor(store.settings.max_concurrency, thread_name_prefix="s3-fetch") as pool:
            got = progress(zip(remote, pool.map(fetch, remote), strict=True), "fetch s3://", total=len(remote), unit="file")
            for i, res in got:
                if isinstance(res, Exception):  # the message starts with the URI, which the row names already
                    errors[i] = str(res).removeprefix(f"{files[i]}: ").removeprefix("cannot download: ")
                else:
                    local[i] = res
        yield local, errors


def predict_paths(params: Params, paths: Sequence[str | Path], model_uri: str | None = None,
                  backend: Backend | None = None, report: Callable[[str], None] | None = None) -> PredictResult:
    """Class probabilities for every input (files, folders, manifests, s3:// objects and prefixes);
    failures are recorded per file and passed to `report` (default: printed on stderr) as they
    happen. Rows keep the input's name: an s3:// URI stays the URI, not the temporary copy."""
    cfg = params.predict
    store = store_for(params)  # its boto3 client is made on first use: free without s3:// inputs
    files = collect_inputs(paths, store)
    backend = backend or load_backend(params, model_uri)
    say = report or (lambda msg: print(msg, file=sys.stderr))
    reader = WindowReader(backend.sample_rate, cfg.max_window_s, cfg.hop_s, params.audio.min_duration_s,
                          SpeechCheck.from_audio_config(params.audio))
    results = [FilePrediction(path=f) for f in files]
    batcher = _Batcher(backend, results, cfg.batch_size, say)
    lookahead = max(cfg.batch_size, 2 * cfg.decode_workers)
    with fetched(files, store) as (local, missing):
        for i, reason in missing.items():
            fail(results[i], reason, say)
        decoded = _decode_ahead(reader, local, cfg.decode_workers, lookahead)
        for i, got in progress(decoded, "predict", total=len(files), unit="file"):
            res = results[i]
            if res.error is not None:  # not fetched from S3: reported above
                continue
            if isinstance(got, BaseException):
                fail(res, _reason(got), say)
                continue
            res.duration_s, res.windows = got.duration_s, got.n_windows
            windows = got.windows()
            while True:
                try:
                    wave = next(windows)
                except StopIteration:
                    break
                except Exception as e:  # a window that cannot be read fails its file only
                    fail(res, _reason(e), say)
                    break
                if isinstance(wave, str):  # too little speech in this window: not scored
                    res.no_speech = res.no_speech or wave
                    continue
                res.speech_windows += 1
                batcher.add(i, wave)
            if res.speech_windows:
                res.no_speech = None  # some window had speech: the file is scored on those windows
        batcher.finish()
    record_files(getattr(backend, "rec", None), results, batcher.window_files)  # the prediction log
    save = getattr(backend, "save", None)
    if save is not None:
        save()
    return PredictResult(backend.uri, list(backend.classes), results)


def render(result: PredictResult, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {FORMATS}")
    if fmt == "csv":
        return result.to_csv()
    return json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n"  # never NaN: not JSON


def write_result(result: PredictResult, out: str | Path | None, fmt: str) -> None:
    """To stdout, or atomically to `out`."""
    text = render(result, fmt)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(out, text)


# ----------------------------------------------------------------------------- serving client
def invocations_payload(waves: Sequence[np.ndarray] | None = None, sample_rate: int | None = None, *,
                        files: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Body for `POST /invocations` of `mlflow models serve`, in MLflow's `dataframe_split` form,
    matching the pyfunc signature (`affectflow.serving.pyfunc`). Paths are never sent: a path only means
    something on the server's own disk. Either

    waves + sample_rate: mono float waveforms as JSON lists (`audio`, `sample_rate`), for audio
        that exists only in memory; or
    files: the files' own encoded bytes, base64 (`audio_b64`); the server decodes them, mixes to
        mono and resamples as for a path. The body is several times smaller than the samples as
        JSON floats (figures in benchmarks/RESULTS.md)."""
    if files is not None:
        if waves is not None:
            raise ValueError("invocations_payload: give waves or files, not both")
        return {"dataframe_split": {"columns": ["audio_b64"],
                                    "data": [[base64.b64encode(Path(f).read_bytes()).decode("ascii")] for f in files]}}
    if waves is None or sample_rate is None:
        raise ValueError("invocations_payload: give waves with their sample_rate, or files")
    return {"dataframe_split": {"columns": ["audio", "sample_rate"],
                                "data": [[np.asarray(w, np.float64).round(7).tolist(), int(sample_rate)]
                                         for w in waves]}}


def post_invocations(url: str, payload: dict[str, Any], timeout: float = 60.0) -> pd.DataFrame:
    """POST a payload to a scoring server's /invocations; its predictions as a DataFrame."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}/invocations: HTTP {e.code}: {e.read().decode(errors='replace')[:2000]}") from None
    return pd.DataFrame(body["predictions"])
