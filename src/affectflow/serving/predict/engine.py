"""The prediction loop: windows batched across files, per-file outcomes, the output."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affectflow import audio
from affectflow.config import Params
from affectflow.runtime.progress import progress
from affectflow.serving.predict.backends import Backend, load_backend
from affectflow.serving.predict.inputs import collect_inputs, fetched
from affectflow.serving.predict.windows import WindowReader, _decode_ahead
from affectflow.serving.prediction_log import record_files
from affectflow.speech import STATUS_NO_SPEECH, STATUS_OK, SpeechCheck
from affectflow.storage import atomic_write_text
from affectflow.storage.s3 import store_for

FORMATS = ("json", "csv")
PROB_DECIMALS = 6
"""Digits kept for probabilities in the output (float32 models: more would be noise)."""


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
    _dims: np.ndarray | None = field(default=None, repr=False)

    def add(self, probs: np.ndarray, dims: np.ndarray | None = None) -> None:
        self._sum = probs.astype(np.float64) if self._sum is None else self._sum + probs
        if dims is not None and len(dims):
            self._dims = dims.astype(np.float64) if self._dims is None else self._dims + dims
        self._seen += 1

    @property
    def dimensions(self) -> np.ndarray | None:
        """Mean window dimensions (arousal, valence[, dominance]) of a model with a dimensional head."""
        if self.error is not None or self._dims is None:
            return None
        return self._dims / self._seen

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
    dimensions: list[str] = field(default_factory=list)
    """The model's dimensional outputs (arousal, valence[, dominance] on [-1, 1]), after the classes
    in each score row."""
    weak_labels: bool | None = None
    """Whether those were trained on weak (categorical-mapped) labels; None: not known."""

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
            probs, dims = p.probabilities, p.dimensions
            rec: dict[str, Any] = {"path": p.path, "status": p.status,
                                   "label": None if probs is None else self.classes[int(np.argmax(probs))]}
            for c, i in zip(self.classes, range(len(self.classes)), strict=True):
                rec[c] = None if probs is None else round(float(probs[i]), PROB_DECIMALS)
            for k, d in enumerate(self.dimensions):
                rec[d] = None if probs is None or dims is None else round(float(dims[k]), PROB_DECIMALS)
            rec.update({"duration_s": None if p.duration_s is None else round(p.duration_s, 3),
                        "windows": p.windows, "error": p.error or p.no_speech})
            out.append(rec)
        return out

    def to_json(self) -> dict[str, Any]:
        preds = []
        for r in self.records():
            probs = {c: r.pop(c) for c in self.classes}
            dims = {d: r.pop(d) for d in self.dimensions}
            ok = r["status"] == "ok"
            preds.append({**r, "probabilities": probs if ok else None,
                          **({"dimensions": dims if ok else None} if self.dimensions else {})})
        head = {"model": self.model_uri, "classes": self.classes}
        if self.dimensions:
            head |= {"dimensions": self.dimensions, "weak_labels": self.weak_labels}
        return {**head, "n_files": len(self.predictions),
                "n_failed": len(self.failed), "n_no_speech": len(self.without_speech), "predictions": preds}

    def to_csv(self) -> str:
        buf = io.StringIO()
        cols = ["path", "status", "label", *self.classes, *self.dimensions, "duration_s", "windows", "error"]
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
        c = len(self.backend.classes)  # score rows: probabilities, then the dimensions (if any)
        self.results[i].add(p[:c], p[c:])

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
        # the prediction log, while s3:// inputs still have their local copies (`monitor.keep_audio`)
        record_files(getattr(backend, "rec", None), results, batcher.window_files, local)
    save = getattr(backend, "save", None)
    if save is not None:
        save()
    return PredictResult(backend.uri, list(backend.classes), results, list(getattr(backend, "dimensions", [])),
                         getattr(backend, "weak_labels", None))


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
