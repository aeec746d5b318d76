"""The prediction log: one record per clip a deployment scored, for monitoring and adaptation.

Why: nothing watched the model once it served. `affectflow predict`, the MLflow pyfunc and the KServe
predictor append one record per clip (file or request row) to a date-partitioned Parquet dataset
(a folder or `s3://` prefix): time, source, model, status, duration, scored windows, class
probabilities, a compact feature summary (`SUMMARY`: enough for drift tests, `affectflow monitor`)
and the clip's raw feature moments (float32 mean and sum of squared deviations per dimension, the
latter empty for a one-frame vector; for vector kinds the mean is the clip's features, which DANN
can adapt to without audio), and for a clip scored in several windows each window's moments: the
deployment statistics take a clip's windows one at a time (forgetting per window), so with them
`rebuild_deployment` replays exactly what the running statistics consumed (`DeploymentStats.merge`).
A record is about 4 bytes per feature dimension plus 100 bytes: 0.5 KB for eGeMAPS, 25 KB for
ComParE; a clip of n > 1 windows adds n times its moments. Raw audio only with `monitor.keep_audio`
(FLAC at the model's rate, or an input file as it is, under `audio/`, same retention).

Writes are buffered and atomic: a part file `date=YYYY-MM-DD/part-<time>-<id>.parquet` is written
(by a background thread when the buffer fills, so no request waits for it) to a temporary name and renamed (an S3 PUT is atomic by itself), so a reader never sees half a part
and a crash loses at most the buffer. A server flushes every `flush_records` records or `flush_s`
seconds and at exit; `affectflow predict` at the end of its run. Logging never fails a request: a
failure to write is logged with its cause and the records stay buffered for the next flush.

The summary: the clip's features standardised with the model's pooled *training* statistics (not
the deployment's running ones, which would normalise a new microphone away), pooled over time for
frame-level kinds, then projected to `summary_dims` numbers by a fixed seeded Gaussian matrix when
there are more dimensions (Johnson-Lindenstrauss: distances and shifts survive). The monitor
projects the training features the same way (`Summariser`), so both sides are comparable.
"""

from __future__ import annotations

import atexit
import datetime as dt
import io
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from affectflow.features.keys import kind_spec
from affectflow.models.data import NormStats, normalize
from affectflow.serving.deployment import DeploymentStats, clip_moments, for_model
from affectflow.storage import atomic_path
from affectflow.storage.s3 import SCHEME, S3NotFoundError, S3Store, S3Uri, is_s3

log = logging.getLogger(__name__)

PROJECTION_SEED = 28
"""Seed of the summary projection: fixed, so every writer and the monitor agree."""
PART_PREFIX = "part-"
AUDIO_FOLDER = "audio"
SOURCES = ("predict", "pyfunc", "kserve")
"""Who wrote a record (`source` column)."""

SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")),
    ("source", pa.string()),
    ("model", pa.string()),
    ("feature_key", pa.string()),
    ("item", pa.string()),
    ("status", pa.string()),
    ("duration_s", pa.float64()),
    ("windows", pa.int32()),
    ("classes", pa.list_(pa.string())),
    ("probabilities", pa.list_(pa.float32())),
    ("summary", pa.list_(pa.float32())),
    ("moment_frames", pa.float64()),
    ("moment_mean", pa.list_(pa.float32())),
    ("moment_m2", pa.list_(pa.float32())),
    ("audio", pa.string()),
    ("dimension_names", pa.list_(pa.string())),
    ("dimensions", pa.list_(pa.float32())),
    ("window_frames", pa.list_(pa.float64())),
    ("window_mean", pa.list_(pa.list_(pa.float32()))),
    ("window_m2", pa.list_(pa.list_(pa.float32()))),
])
"""The one record format (writer: `PredictionLog`, reader: `read_log`)."""
ADDED_FIELDS = ("dimension_names", "dimensions", "window_frames", "window_mean", "window_m2")
"""Fields added after the first parts were written, which a part without them reads as null, never as
an error: a model's dimensional outputs (issue 29; empty / null without a dimensional head) and the
frames of each window the deployment statistics consumed and, for a clip of several, each window's
moments (one window's are the clip's): what they took, one window at a time, so
`rebuild_deployment` is exact."""


class PredictionLogError(ValueError):
    """A log part that is not a prediction log; the message names the file and the field."""


# ----------------------------------------------------------------------------- the summary
class Summariser:
    """A clip's raw features -> its summary vector (see the module docstring)."""

    def __init__(self, prior: NormStats, feature: str, dims: int):
        self.prior = prior
        self.frame_level = kind_spec(feature).frame_level
        self.dims = dims
        self._projection: dict[int, np.ndarray] = {}

    def pooled(self, raw: np.ndarray) -> np.ndarray:
        """Standardised with the training statistics, pooled over time (frame-level kinds)."""
        z = np.asarray(normalize(np.asarray(raw, np.float32), self.prior), np.float32)
        return z.mean(axis=-1) if self.frame_level and z.ndim > 1 else z.reshape(-1)

    def project(self, pooled: np.ndarray) -> np.ndarray:
        """(D,) or (n, D) -> `dims` numbers (as is when D <= dims)."""
        d = pooled.shape[-1]
        if d <= self.dims:
            return pooled.astype(np.float32)
        if d not in self._projection:
            rng = np.random.default_rng([PROJECTION_SEED, d])
            self._projection[d] = (rng.standard_normal((d, self.dims)) / np.sqrt(d)).astype(np.float32)
        return (pooled @ self._projection[d]).astype(np.float32)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return self.project(self.pooled(raw))


@dataclass
class WindowNote:
    """What the log keeps of one scored window: its summary and raw moments."""

    summary: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    frames: float


def merge_notes(notes: Sequence[WindowNote]) -> WindowNote | None:
    """A clip's windows as one note: mean summary, moments merged exactly (Chan)."""
    if not notes:
        return None
    summary = np.mean([n.summary for n in notes], axis=0)
    mean, m2, frames = notes[0].mean, notes[0].m2, notes[0].frames
    for n in notes[1:]:
        total = frames + n.frames
        delta = n.mean - mean
        mean = mean + delta * (n.frames / total)
        m2 = m2 + n.m2 + np.square(delta) * (frames * n.frames / total)
        frames = total
    return WindowNote(summary.astype(np.float32), mean, m2, frames)


# ----------------------------------------------------------------------------- the log
def part_name(now: dt.datetime) -> str:
    return f"date={now:%Y-%m-%d}/{PART_PREFIX}{now:%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"


def _join(location: str, rel: str) -> str:
    return f"{location.rstrip('/')}/{rel}" if is_s3(location) else str(Path(location) / rel)


class PredictionLog:
    """A buffered writer of log records at `location` (folder or s3:// prefix)."""

    def __init__(self, location: str | Path, *, flush_records: int = 256, flush_s: float = 60.0,
                 keep_audio: bool = False, store: S3Store | None = None,
                 clock: Callable[[], dt.datetime] | None = None):
        self.location = str(location)
        self.flush_records = flush_records
        self.flush_s = flush_s
        self.keep_audio = keep_audio
        self.store = store
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.buffer: list[dict[str, Any]] = []
        self.first_buffered: float | None = None
        self.lock = threading.Lock()
        self.writer: threading.Thread | None = None
        self.parts_written = 0

    @classmethod
    def from_settings(cls, location: str | Path, settings: Any, store: S3Store | None = None) -> PredictionLog:
        """From a `MonitorConfig` (or anything with its fields)."""
        return cls(location, flush_records=settings.flush_records, flush_s=settings.flush_s,
                   keep_audio=settings.keep_audio, store=store)

    def _s3(self) -> S3Store:
        if self.store is None:
            self.store = S3Store()
        return self.store

    def append(self, records: Sequence[dict[str, Any]], flush: bool = False) -> None:
        """Buffer records; write a part when the buffer is full or old enough (in a background
        thread: the request that fills the buffer does not wait for the write), or now with `flush`."""
        with self.lock:
            if records and self.first_buffered is None:
                self.first_buffered = time.monotonic()
            self.buffer.extend(records)
            due = len(self.buffer) >= self.flush_records or (
                self.first_buffered is not None and time.monotonic() - self.first_buffered >= self.flush_s)
            start = due and not flush and (self.writer is None or not self.writer.is_alive())
            if start:
                self.writer = threading.Thread(target=self.flush, name="prediction-log", daemon=True)
                self.writer.start()
        if flush:
            self.flush()

    def flush(self) -> str | None:
        """Write the buffered records as one part (atomically); the part's location, or None."""
        writer = self.writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()  # a background write in progress: this flush follows it
        with self.lock:
            records, self.buffer, self.first_buffered = self.buffer, [], None
        if not records:
            return None
        where = _join(self.location, part_name(self.clock()))
        try:
            table = pa.Table.from_pylist(records, schema=SCHEMA)
            if is_s3(where):
                sink = io.BytesIO()
                pq.write_table(table, sink)
                self._s3().write_bytes(where, sink.getvalue())
            else:
                Path(where).parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(where) as tmp:
                    pq.write_table(table, tmp)
        except Exception as e:  # never fail a request for the log: keep the records for the next try
            log.warning("prediction log %s: cannot write a part (%s: %s); %d records kept for the next flush",
                        self.location, type(e).__name__, e, len(records))
            with self.lock:
                self.buffer[:0] = records
                self.first_buffered = self.first_buffered or time.monotonic()
            return None
        self.parts_written += 1
        return where

    def keep_wave(self, wave: np.ndarray, sample_rate: int) -> str:
        """Write one clip's audio (FLAC) under audio/date=.../; its location."""
        import soundfile as sf

        now = self.clock()
        where = _join(self.location, f"{AUDIO_FOLDER}/date={now:%Y-%m-%d}/{uuid.uuid4().hex}.flac")
        sink = io.BytesIO()
        sf.write(sink, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), sample_rate, format="FLAC")
        if is_s3(where):
            self._s3().write_bytes(where, sink.getvalue())
        else:
            Path(where).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(where) as tmp:
                tmp.write_bytes(sink.getvalue())
        return where

    def keep_file(self, path: str) -> str:
        """Keep an input file as it is (affectflow predict: the file, not a re-encoding)."""
        now = self.clock()
        where = _join(self.location, f"{AUDIO_FOLDER}/date={now:%Y-%m-%d}/{uuid.uuid4().hex}{Path(path).suffix}")
        if is_s3(where):
            self._s3().upload(path, where)
        else:
            Path(where).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(where) as tmp:
                shutil.copyfile(path, tmp)
        return where


# ----------------------------------------------------------------------------- reading, retention
def _s3_objects(location: str, store: S3Store | None) -> list[tuple[str, str]]:
    """(path relative to `location`, URI) of every object under an s3:// prefix."""
    root = S3Uri.parse(location.rstrip("/") + "/")
    try:
        objs = (store or S3Store()).list(str(root))
    except S3NotFoundError:
        return []
    return [(o.key[len(root.key):], f"{SCHEME}{root.bucket}/{o.key}") for o in objs]


def _parts(location: str, store: S3Store | None) -> list[tuple[str, str]]:
    """(date, part location) of every part, sorted."""
    if is_s3(location):
        out = []
        for rel, uri in _s3_objects(location, store):
            bits = rel.split("/")
            if len(bits) == 2 and bits[0].startswith("date=") and bits[1].startswith(PART_PREFIX) \
                    and bits[1].endswith(".parquet"):
                out.append((bits[0][5:], uri))
        return sorted(out)
    root = Path(location)
    if not root.is_dir():
        return []
    return sorted((p.parent.name[5:], str(p)) for p in root.glob(f"date=*/{PART_PREFIX}*.parquet"))


def read_log(location: str | Path, since: dt.datetime | None = None, store: S3Store | None = None) -> pd.DataFrame:
    """Every record at `location` (from `since` on), in time order; columns `SCHEMA`."""
    frames = []
    floor = None if since is None else f"{since:%Y-%m-%d}"
    for day, where in _parts(str(location), store):
        if floor is not None and day < floor:
            continue
        try:
            if is_s3(where):
                table = pq.read_table(io.BytesIO((store or S3Store()).read_bytes(where)))
            else:
                table = pq.read_table(where)
        except Exception as e:
            raise PredictionLogError(f"{where}: not a readable Parquet part ({e})") from None
        missing = [n for n in SCHEMA.names if n not in table.column_names]
        if [n for n in missing if n not in ADDED_FIELDS]:
            raise PredictionLogError(f"{where}: field '{missing[0]}' missing: not a prediction-log part")
        for name in missing:  # an older part: null in the fields added since
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
        frames.append(table.select(SCHEMA.names).to_pandas())
    if not frames:
        return pd.DataFrame({n: pd.Series(dtype=object) for n in SCHEMA.names})
    df = pd.concat(frames, ignore_index=True)
    if since is not None:
        df = df[df["time"] >= pd.Timestamp(since)]
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def prune(location: str | Path, retention_days: int, now: dt.datetime | None = None,
          store: S3Store | None = None) -> int:
    """Delete record parts and kept audio of days older than `retention_days`; how many files."""
    now = now or dt.datetime.now(dt.UTC)
    floor = f"{now - dt.timedelta(days=retention_days):%Y-%m-%d}"
    loc = str(location)
    if is_s3(loc):
        old = [uri for rel, uri in _s3_objects(loc, store)
               if any(b.startswith("date=") and b[5:] < floor for b in rel.split("/"))]
        if old:
            (store or S3Store()).delete(old)
        return len(old)
    removed = 0
    for folder in [*Path(loc).glob("date=*"), *Path(loc).glob(f"{AUDIO_FOLDER}/date=*")]:
        if folder.is_dir() and folder.name[5:] < floor:
            removed += sum(1 for f in folder.iterdir() if f.is_file())
            shutil.rmtree(folder)
    return removed


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and len(value) > 0


def consumed_moments(record: Any) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    """(mean, m2, frames, clips) in the order the deployment statistics took them from one logged
    clip: each window's moments (`window_*`; one window: the clip's moments). A record written
    before the window fields gives its merged moments once, counted as its `windows` (forgetting
    applied once for them: exact for one window, close for several)."""
    frames = record.get("window_frames")
    if _present(frames) and len(frames) > 1:
        means = record["window_mean"]
        m2s = record["window_m2"] if _present(record.get("window_m2")) else [None] * len(means)
        return [(np.asarray(m, np.float64), np.zeros(len(m)) if d is None else np.asarray(d, np.float64),
                 float(f), 1) for m, d, f in zip(means, m2s, frames, strict=True)]
    if not _present(record.get("moment_mean")):
        return []
    mean = np.asarray(record["moment_mean"], np.float64)
    m2 = np.asarray(record["moment_m2"], np.float64) if _present(record.get("moment_m2")) else np.zeros_like(mean)
    windows = record.get("windows")
    clips = 1 if _present(frames) or windows is None or windows != windows else max(1, int(windows))  # NaN: none
    return [(mean, m2, float(record["moment_frames"]), clips)]


def rebuild_deployment(meta: Any, records: pd.DataFrame) -> DeploymentStats:
    """The deployment statistics the logged clips add up to: a fresh state for `meta` fed, in time
    order, what the running statistics consumed (`consumed_moments`, through `DeploymentStats.merge`).
    Every record with moments counts, whatever its status: a file that failed after some of its
    windows were scored (`affectflow predict`) had those windows consumed. Exact up to the log's
    float32 moments (a record written before the window fields, of several windows: close)."""
    stats = for_model(meta)
    for _, r in records[records["feature_key"] == meta.feature_key].iterrows():
        for mean, m2, frames, clips in consumed_moments(r):
            stats.merge(mean, m2, frames, clips)
    return stats


# ----------------------------------------------------------------------------- the recorder
@dataclass
class ClipOutcome:
    """One clip as its caller saw it (a predict file, a request row)."""

    item: str
    status: str
    probabilities: np.ndarray | None
    duration_s: float | None
    windows: int = 0
    wave: np.ndarray | None = None
    """The clip's audio at the model's rate (servers), kept with `keep_audio`."""
    rate: int | None = None
    """`wave`'s sample rate (None: the model's)."""
    path: str | None = None
    """The clip's file on this machine (affectflow predict; an s3:// input's downloaded copy), kept as
    is with `keep_audio`."""
    dimensions: np.ndarray | None = None
    """The clip's dimensional outputs (`Recorder.dimension_names`), when the model has that head."""


@dataclass
class Recorder:
    """Attached to a `Recognizer` (`rec.recorder`): `predict_scores` notes every window it scores
    (`observe`), and the caller turns the notes into one record per clip (`record`)."""

    log: PredictionLog
    summariser: Summariser
    model: str
    source: str
    feature_key: str
    classes: list[str]
    sample_rate: int
    dimension_names: list[str] = field(default_factory=list)
    """The model's dimensional outputs (arousal, valence[, dominance]); empty: no dimensional head."""
    local: threading.local = field(default_factory=threading.local, repr=False)
    """Notes per thread: a server scoring two requests at once keeps each request's windows apart."""

    def observe(self, raw: Sequence[np.ndarray]) -> None:
        """Called by `predict_scores` after scoring `raw` (the windows' features, in order)."""
        notes = self.local.__dict__.setdefault("notes", [])
        for a in raw:
            mean, m2, frames = clip_moments(a)
            notes.append(WindowNote(self.summariser(a), mean, m2, frames))

    def take(self) -> list[WindowNote]:
        notes = self.local.__dict__.get("notes", [])
        self.local.notes = []
        return notes

    def record(self, clips: Sequence[ClipOutcome], owners: Sequence[int], flush: bool = False) -> None:
        """One record per clip; `owners[j]`: the clip (index into `clips`) of the j-th window noted
        since the last call. Never raises: a log problem is logged, the answer stands."""
        notes = self.take()
        try:
            self.log.append(self._records(clips, owners, notes), flush=flush)
        except Exception as e:
            log.warning("prediction log %s: records of %d clips dropped (%s: %s)", self.log.location, len(clips),
                        type(e).__name__, e)

    def _records(self, clips: Sequence[ClipOutcome], owners: Sequence[int],
                 notes: list[WindowNote]) -> list[dict[str, Any]]:
        if len(owners) != len(notes):  # a caller's bookkeeping out of step: keep the answers, not the summaries
            log.warning("prediction log: %d windows noted for %d owners; summaries left out", len(notes), len(owners))
            notes, owners = [], []
        per_clip: dict[int, list[WindowNote]] = {}
        for o, n in zip(owners, notes, strict=True):
            per_clip.setdefault(int(o), []).append(n)
        now = self.log.clock()
        out = []
        for k, c in enumerate(clips):
            windows = per_clip.get(k, [])
            note = merge_notes(windows)
            several = len(windows) > 1  # one window: its moments are the clip's
            audio = None
            if self.log.keep_audio and c.status == "ok":
                if c.wave is not None:
                    audio = self.log.keep_wave(c.wave, c.rate or self.sample_rate)
                elif c.path and Path(c.path).is_file():  # the input file (an s3:// object's local copy)
                    audio = self.log.keep_file(c.path)
            probs = None if c.probabilities is None else np.asarray(c.probabilities, np.float32).tolist()
            out.append({
                "time": now, "source": self.source, "model": self.model, "feature_key": self.feature_key,
                "item": c.item, "status": c.status,
                "duration_s": None if c.duration_s is None else float(c.duration_s),
                "windows": int(c.windows), "classes": self.classes, "probabilities": probs,
                "summary": None if note is None else note.summary.tolist(),
                "moment_frames": None if note is None else note.frames,
                "moment_mean": None if note is None else note.mean.tolist(),
                "moment_m2": None if note is None or note.frames <= 1 else note.m2.tolist(),  # one frame: 0
                "audio": audio,
                "dimension_names": self.dimension_names,
                "dimensions": None if c.dimensions is None or c.status != "ok"
                else np.asarray(c.dimensions, np.float32).tolist(),
                "window_frames": [n.frames for n in windows] if windows else None,
                "window_mean": [n.mean.tolist() for n in windows] if several else None,
                "window_m2": [n.m2.tolist() for n in windows]
                if several and any(n.frames > 1 for n in windows) else None,  # one-frame windows: 0
            })
        return out


def attach_recorder(rec: Any, location: str | Path, settings: Any, model: str, source: str,
                    store: S3Store | None = None) -> Recorder:
    """Log what `rec` (a `Recognizer`) scores at `location` (`settings`: a `MonitorConfig`); old
    partitions are pruned now, the buffer is flushed at exit."""
    plog = PredictionLog.from_settings(location, settings, store)
    try:
        prune(location, settings.retention_days, store=store)
    except Exception as e:  # retention is best effort at start; affectflow monitor prunes too
        log.warning("prediction log %s: cannot prune old partitions (%s)", location, e)
    meta = rec.meta
    recorder = Recorder(plog, Summariser(NormStats.from_dict(meta.normalization), meta.feature, settings.summary_dims),
                        model, source, meta.feature_key, list(meta.classes), int(meta.sample_rate),
                        list(meta.dimensions.names) if getattr(meta, "dimensions", None) else [])
    rec.recorder = recorder
    atexit.register(plog.flush)
    return recorder


def attach_server_log(rec: Any, location: str, keep_audio: bool, source: str, model: str) -> Recorder | None:
    """A server's log (pyfunc: ServingConfig `prediction_log`; KServe: `--prediction_log`), with the
    other settings at `MonitorConfig`'s defaults; empty location: no log."""
    from affectflow.config import MonitorConfig

    if not location:
        rec.recorder = None
        return None
    return attach_recorder(rec, location, MonitorConfig(keep_audio=keep_audio), model, source)


def model_label(meta: Any) -> str:
    """What a record names as its model: the MLflow run that logged it, else its feature key."""
    run = (meta.mlflow or {}).get("run_id") if getattr(meta, "mlflow", None) else None
    return str(run or f"{meta.arch}/{meta.feature_key[:12]}")


def record_request(rec: Any, groups: Sequence[tuple[Sequence[int], Sequence[np.ndarray], int]],
                   probs: np.ndarray, scored: Sequence[int], window_rows: Sequence[int]) -> None:
    """The servers' one call (`pyfunc.score_windows_all`, pyfunc and KServe alike): a record per request
    row (`groups`: (rows, waveforms, rate)); `probs`: the score rows, class probabilities then the
    dimensions (if any); `window_rows`: the row of each window scored, in the order scored. No-op
    without a recorder."""
    recorder = getattr(rec, "recorder", None)
    if recorder is None:
        return
    c = len(recorder.classes)
    dims = probs[:, c:] if recorder.dimension_names and probs.shape[1] > c else None
    probs = probs[:, :c]
    ok = set(int(i) for i in scored)
    counts = np.bincount(np.asarray(window_rows, np.int64), minlength=len(probs)) if len(window_rows) else \
        np.zeros(len(probs), np.int64)
    rows: dict[int, ClipOutcome] = {}
    for idx, waves, rate in groups:
        for i, w in zip(idx, waves, strict=True):
            rows[int(i)] = ClipOutcome(item=f"row {i}", status="ok" if i in ok else "no_speech",
                                       probabilities=probs[i] if i in ok else None, duration_s=len(w) / rate,
                                       windows=int(counts[i]), wave=w, rate=rate,
                                       dimensions=None if dims is None or i not in ok else dims[i])
    recorder.record([rows[i] for i in range(len(rows))], window_rows)


def record_files(rec: Any, predictions: Sequence[Any], window_files: Sequence[int],
                 local: Sequence[str] | None = None) -> None:
    """`affectflow predict`'s one call: a record per `FilePrediction` (flushed now: the run ends).
    `local`: each input's file on this machine (an s3:// object's downloaded copy, which must still
    exist: it is what `keep_audio` keeps); default: the inputs' own paths."""
    recorder = getattr(rec, "recorder", None)
    if recorder is None:
        return
    files = list(local) if local is not None else [p.path for p in predictions]
    clips = [ClipOutcome(item=p.path, status=p.status, probabilities=p.probabilities, duration_s=p.duration_s,
                         windows=p.speech_windows, path=f, dimensions=p.dimensions)
             for p, f in zip(predictions, files, strict=True)]
    recorder.record(clips, window_files, flush=True)
