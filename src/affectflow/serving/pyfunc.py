"""The recognizer as an MLflow pyfunc: audio in, class probabilities out.

Feature extraction lives inside the model (the model folder's feature configuration and
normalisation, through `affectflow.serving.recognizer`), so a registered model is usable on its own:

    model = mlflow.pyfunc.load_model("models:/affectflow-ser@champion")
    model.predict(pd.DataFrame({"audio": [wave.tolist()], "sample_rate": [16000]}))  # waveforms
    model.predict(pd.DataFrame({"audio_b64": [base64.b64encode(Path("clip.flac").read_bytes()).decode()]}))
    mlflow.pyfunc.load_model(uri, model_config={"allow_path_input": True}).predict(
        pd.DataFrame({"path": ["clip.wav"]}))                                   # files, when enabled

Input: a DataFrame with, per row, exactly one of
  `audio`      mono float samples at `sample_rate` (Hz, required for such rows);
  `audio_b64`  base64 of an encoded audio file (wav, flac, ogg, mp3: what soundfile reads), decoded
               in memory. Why: a remote client (`mlflow models serve`, KServe, curl) has files, not
               server paths, and the encoded file is several times smaller than its samples as JSON
               floats. The file's own header gives the rate; `sample_rate`, if set on such a row,
               must agree with it;
  `path`       a file on the machine running the model. Off unless the model configuration says
               `allow_path_input: true`: a served model would otherwise open any file the server
               can read for any client (and tell it which exist).
Every row is held to the audio rules of ingest (`affectflow.audio`: decodable, not empty, not
truncated, finite samples, a positive sample rate, at least the model's audio.min_duration_s), and a
request to `max_rows` rows and `max_audio_s` seconds of audio in all. Files are mixed to mono and
resampled to the model's rate as in training (`affectflow.audio`); a clip longer than
`max_window_s` is scored in windows like `affectflow predict` scores a file (`score_windows`). Output: one probability column
per class, in model order, plus `label` (argmax) and `status`: `ok`, or `no_speech` for a row with
less than the model's `audio.min_speech_s` of speech (`affectflow.speech`), whose class columns and
label are null: silence, noise or music never get an emotion. A model with a dimensional head adds
`arousal`, `valence` (and `dominance` when trained on it) on [-1, 1] after the class columns (README
"Arousal / valence": weak labels are weak). The affectflow package travels with the model
(`code_paths`).

Timeline option: `params={"timeline": True}` (optional `window_s`, `hop_s`, `smooth`; defaults
`predict.timeline`'s) with one recording returns its timeline instead (`affectflow.serving.timeline`):
one row per segment with `start_s`, `end_s`, the class columns, the dimensions, `label` and
`status`, as `affectflow predict --timeline` and KServe's `timeline: true` give it.

Errors: input that breaks a rule is the client's (`PyfuncInputError`: an MlflowException with
INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 and the message naming the
row and the column); anything else is logged on the server with its traceback and answered with
HTTP 500 and a message that says so, never with the traceback (which shows server paths).

Configuration (`ServingConfig`): logged with the model (`log_pyfunc(..., config=...)`, the
MLmodel's `model_config`) and overridable where it runs, by MLflow's own mechanisms:
`mlflow.pyfunc.load_model(uri, model_config={...})`, or for `mlflow models serve` the environment
variable `SERVING_MODEL_CONFIG='{"max_rows": 16}'` (JSON; `MLFLOW_PYFUNC_INFERENCE_CONFIG` works too).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from affectflow import audio
from affectflow.speech import STATUS_NO_SPEECH, STATUS_OK, SpeechCheck

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model_dir"
ENCODER_ARTIFACT = "ssl_encoder"
"""Files a feature kind carries inside the logged model (`FeatureKind.carried_files`: the `ssl` kind's
pretrained encoder); the name stays for models logged before."""
EXAMPLE_SECONDS = 0.5
"""Length of the generated waveform logged as the input example."""
SOURCE_COLUMNS = ("path", "audio", "audio_b64")
"""The input columns that carry a row's audio; a row sets exactly one of them."""
SIGNATURE_COLUMNS = ("path", "audio", "sample_rate", "audio_b64")
"""`status` of a row with less than the model's audio.min_speech_s of speech: no class, no label."""
MAX_SAMPLE_RATE = 768_000
"""Highest `sample_rate` taken for an `audio` row (Hz); more is a unit mistake, not audio."""


class ServingConfig(BaseModel):
    """What a loaded affectflow pyfunc accepts (the MLmodel's `model_config`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    allow_path_input: bool = False
    """Accept `path` rows (files on the model's machine). Only for local use: never on a server."""
    max_rows: int = Field(64, ge=1)
    """Rows per request."""
    max_audio_s: float = Field(600.0, gt=0)
    """Seconds of audio per request, all rows together (measured before decoding)."""
    max_window_s: float | None = Field(None, gt=0)
    """A clip longer than this is scored in windows, probabilities averaged over the windows with
    speech, as `affectflow predict` does; None: params' `predict.max_window_s` default."""
    hop_s: float | None = Field(None, gt=0)
    """Step between windows; None: `predict.hop_s`'s default."""
    deploy_stats: str = ""
    """Where the served model keeps its deployment statistics of unknown-corpus audio (a JSON path
    or s3:// URI, written after every request; `affectflow.serving.deployment`); empty = in memory,
    from the pooled training statistics again at every start."""
    prediction_log: str = ""
    """Where the served model logs one record per request row (a folder or s3:// prefix;
    `affectflow.serving.prediction_log`, read by `affectflow monitor`); empty = no log."""
    keep_audio: bool = False
    """Keep each logged row's audio beside its record (personal data: only with consent)."""

    def windows(self) -> tuple[float, float]:
        """(window, hop) in seconds: these settings, else `affectflow predict`'s defaults (one home)."""
        from affectflow.config import PredictConfig

        defaults = PredictConfig()
        return (self.max_window_s or defaults.max_window_s, self.hop_s or defaults.hop_s)

    @classmethod
    def from_model_config(cls, config: dict[str, Any] | None) -> ServingConfig:
        try:
            return cls.model_validate(dict(config or {}))
        except ValidationError as e:
            parts = [f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
            raise ValueError(f"affectflow pyfunc model_config: {'; '.join(parts)}") from None


class PyfuncInputError(MlflowException, ValueError):
    """The request breaks an input rule: HTTP 400 from the scoring server, a ValueError in Python."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class AffectflowPyfunc(PythonModel):
    """`mlflow.pyfunc.PythonModel` around a model folder."""

    def load_context(self, context: Any) -> None:
        from affectflow.serving.prediction_log import attach_server_log, model_label
        from affectflow.serving.recognizer import Featurizer, load_model_dir

        self.rec = load_model_dir(context.artifacts[MODEL_ARTIFACT])
        encoder = context.artifacts.get(ENCODER_ARTIFACT)
        if encoder:  # the checkpoint travels with the model: no hub, no bucket needed to serve it
            from affectflow.features.kinds import kind_spec

            setting = kind_spec(self.rec.meta.feature).carried_setting
            self.rec.meta.feature_config = {**self.rec.meta.feature_config, str(setting): encoder}
        self.featurizer = Featurizer(self.rec.meta)
        self.config = ServingConfig.from_model_config(getattr(context, "model_config", None))
        self.rec.attach_deployment(self.config.deploy_stats or None)
        attach_server_log(self.rec, self.config.prediction_log, self.config.keep_audio, "pyfunc",
                          model_label(self.rec.meta))
        self.min_duration_s = float(self.rec.meta.audio.get("min_duration_s", 0.0))
        self.speech = SpeechCheck.from_audio_config(self.rec.meta.audio)

    # No annotations on purpose: MLflow turns predict() type hints into an input schema of its own.
    def predict(self, context, model_input, params=None):
        from affectflow.serving.timeline import requested_settings

        try:
            groups = parse_input(model_input, getattr(self, "config", ServingConfig()),
                                 min_duration_s=getattr(self, "min_duration_s", 0.0))
            timeline = requested_settings(params, sum(len(ix) for ix, _, _ in groups))
        except ValueError as e:  # AudioError included: the client's input
            raise PyfuncInputError(str(e)) from None
        from affectflow.serving.recognizer import NonFiniteFeatures

        try:
            if timeline is not None:
                return self._timeline(groups, timeline)
            return self._score(groups)
        except NonFiniteFeatures as e:  # name the request row, as for any other bad row
            raise PyfuncInputError(f"pyfunc input row {e.item}: {e}") from None
        except Exception as e:
            log.exception("affectflow pyfunc: scoring a request failed")
            raise MlflowException(f"affectflow pyfunc: internal error while scoring the request "
                                  f"({type(e).__name__}; the traceback is in the server log)",
                                  error_code=INTERNAL_ERROR) from e

    def _score(self, groups: list[tuple[list[int], list[np.ndarray], int]]) -> pd.DataFrame:
        classes = self.rec.classes
        n = sum(len(ix) for ix, _, _ in groups)
        config = getattr(self, "config", ServingConfig())
        rows, scored = score_windows_all(self.rec, self.featurizer, groups,
                                         getattr(self, "speech", SpeechCheck.off()), *config.windows())
        self.rec.deployment.save()
        c = len(classes)
        names = dimension_names(self.rec)
        return output_frame(rows[:, :c].reshape(n, c), classes, scored, rows[:, c:] if names else None, names)

    def _timeline(self, groups: list[tuple[list[int], list[np.ndarray], int]], settings: Any) -> pd.DataFrame:
        """The timeline option on the request's one recording: a row per segment."""
        from affectflow.serving.recognizer import predict_audio_group_scores
        from affectflow.serving.timeline import score_timeline

        (_, waves, rate), = groups
        rec = self.rec
        t = score_timeline((waves[0], rate), lambda w: predict_audio_group_scores(
            rec, [(w, None)], self.featurizer)[0].stacked(), rec.classes, rec.meta.sample_rate, settings,
            name="pyfunc input row 0", speech=getattr(self, "speech", None), dimensions=dimension_names(rec))
        self.rec.deployment.save()
        if getattr(rec, "recorder", None) is not None:  # a timeline is not a clip record: its window notes go
            rec.recorder.take()
        segs = t.segments()
        frame = output_frame(np.asarray(t.probabilities, np.float32), rec.classes,
                             [k for k, s in enumerate(segs) if s["label"] is not None],
                             t.dimensions, t.dimension_names or [])
        lo, hi = t.cells()
        frame.insert(0, "end_s", np.round(hi, 3))
        frame.insert(0, "start_s", np.round(lo, 3))
        return frame


def dimension_names(rec: Any) -> list[str]:
    """The recognizer's dimensional outputs (empty: no dimensional head)."""
    dims = getattr(rec.meta, "dimensions", None)
    return list(dims.names) if dims else []


def score_windows(rec: Any, featurizer: Any, groups: list[tuple[list[int], list[np.ndarray], int]],
                  check: SpeechCheck, max_window_s: float, hop_s: float) -> tuple[np.ndarray, list[int]]:
    """(n rows, classes) probabilities and the rows that were scored: `score_windows_all`'s class columns."""
    rows, scored = score_windows_all(rec, featurizer, groups, check, max_window_s, hop_s)
    return rows[:, : len(rec.classes)], scored


def score_windows_all(rec: Any, featurizer: Any, groups: list[tuple[list[int], list[np.ndarray], int]],
                      check: SpeechCheck, max_window_s: float, hop_s: float) -> tuple[np.ndarray, list[int]]:
    """(n rows, classes [+ dimensions]) score rows and the rows that were scored, the way `affectflow predict`
    scores files: a clip longer than `max_window_s` is cut into windows `hop_s` apart (the last one
    ending at the clip's end, `audio.window_spans`), windows without `check`'s minimum of
    speech are left out, and a row's probabilities are the mean over its windows with speech. A row
    with none is not scored (no speech). Windows reach the deployment statistics in request order
    (row after row, each row's windows in time order), whatever their sample rates, as if sent one
    by one. So the CLI and the servers agree on long clips."""
    from affectflow.serving.prediction_log import record_request
    from affectflow.serving.recognizer import NonFiniteFeatures, predict_audio_group_scores

    n = sum(len(ix) for ix, _, _ in groups)
    owner: list[list[int]] = []  # per group: the request row of each window
    keys: list[list[tuple[int, int]]] = []  # per group: (request row, window number) of each window
    windows: list[tuple[list[np.ndarray], int]] = []
    for idx, waves, rate in groups:
        rows, cut, key = [], [], []
        for i, wave in zip(idx, waves, strict=True):
            spans = audio.window_spans(len(wave), max(1, round(max_window_s * rate)), max(1, round(hop_s * rate)))
            for k, (a, b) in enumerate(spans):
                if check.reason(wave[a:b], rate) is None:
                    rows.append(i)
                    cut.append(wave[a:b])
                    key.append((i, k))
        owner.append(rows)
        keys.append(key)
        windows.append((cut, rate))
    kept = [(rows, w, key) for rows, w, key in zip(owner, windows, keys, strict=True) if rows]
    ranked = sorted(k for _, _, key in kept for k in key)
    rank = {k: r for r, k in enumerate(ranked)}
    total = np.zeros((n, len(rec.classes) + len(dimension_names(rec))), np.float64)
    seen = np.zeros(n, np.int64)
    if kept:
        try:
            scored = [s.stacked() for s in predict_audio_group_scores(
                rec, [w for _, w, _ in kept], featurizer, order=[[rank[k] for k in key] for _, _, key in kept])]
        except NonFiniteFeatures as e:  # name the request row, not the window
            raise NonFiniteFeatures(0, kept[e.group][0][e.item], 0, rec.feature).with_text(str(e)) from None
        for (rows, _, _), p in zip(kept, scored, strict=True):
            np.add.at(total, rows, p)
            np.add.at(seen, rows, 1)
    ok = seen > 0
    total[ok] /= seen[ok, None]
    record_request(rec, groups, total, np.flatnonzero(ok), [row for row, _ in ranked])  # the prediction log
    return total.astype(np.float32), [int(i) for i in np.flatnonzero(ok)]


def output_frame(probs: np.ndarray, classes: list[str], scored: list[int], dimensions: np.ndarray | None = None,
                 names: list[str] | None = None) -> pd.DataFrame:
    """One row per input row: the class columns, the dimensions (`names`, when the model has them),
    `label` and `status` (`ok`, or `no_speech`: the row has too little speech; its class columns,
    dimensions and label are null, never an emotion)."""
    ok = np.zeros(len(probs), bool)
    ok[scored] = True
    out = pd.DataFrame(probs.astype(np.float64), columns=classes)
    names = list(names or []) if dimensions is not None else []
    for j, name in enumerate(names):
        out[name] = np.asarray(dimensions, np.float64)[:, j]
    out["label"] = [classes[i] for i in probs.argmax(axis=1)] if len(out) else []
    if not ok.all():
        out = out.astype(object)  # null (JSON null), not NaN, for the rows without speech
        out.loc[~ok, [*classes, *names, "label"]] = None
    out["status"] = np.where(ok, STATUS_OK, STATUS_NO_SPEECH) if len(out) else []
    return out


def _frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, (str, Path, np.ndarray)):
        model_input = [model_input]
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, list):
        if all(isinstance(x, (str, Path)) for x in model_input):
            model_input = pd.DataFrame({"path": [str(x) for x in model_input]})
        else:
            model_input = pd.DataFrame({"audio": list(model_input)})
    if not isinstance(model_input, pd.DataFrame):
        raise ValueError("pyfunc input: expected a DataFrame with an 'audio_b64', 'audio' or 'path' column, "
                         f"got {type(model_input).__name__}")
    return model_input.reset_index(drop=True)


def parse_input(model_input: Any, config: ServingConfig | None = None,
                min_duration_s: float = 0.0) -> list[tuple[list[int], list[np.ndarray], int]]:
    """Check and decode every row; group them as (row indices, mono waveforms, their sample rate).

    Raises ValueError (`audio.AudioError` for audio that breaks a rule) naming the row and the
    column. `config` defaults to `ServingConfig()`: no `path` rows."""
    cfg = config or ServingConfig()
    df = _frame(model_input)
    present = [c for c in SOURCE_COLUMNS if c in df.columns]
    if not present:
        if not len(df.columns):  # MLflow drops every column outside the signature before predict()
            raise ValueError("pyfunc input: no 'audio_b64', 'audio' or 'path' column; the model takes the columns "
                             f"{', '.join(SIGNATURE_COLUMNS)} and ignores any other")
        raise ValueError(f"pyfunc input: needs an 'audio_b64', an 'audio' or a 'path' column "
                         f"(has {list(map(str, df.columns))})")
    if len(df) > cfg.max_rows:
        raise ValueError(f"pyfunc input: {len(df)} rows; this model takes at most {cfg.max_rows} per request "
                         "(model_config max_rows)")
    columns = []  # the shape of the request first, before any decoding
    for i, row in df.iterrows():
        row_set = [c for c in present if is_set(row[c])]
        if len(row_set) != 1:
            both = "both" if len(row_set) == 2 else "all"
            what = f"{' and '.join(repr(c) for c in row_set)} are {both} set" if row_set else "no audio is set"
            raise ValueError(f"pyfunc input row {i}: {what}; give exactly one of 'audio_b64', 'audio', 'path' per row")
        columns.append(row_set[0])
    groups: dict[int, tuple[list[int], list[np.ndarray]]] = {}
    seconds = 0.0
    for (i, row), column in zip(df.iterrows(), columns, strict=True):
        rate = _row_rate(row, int(i)) if "sample_rate" in df.columns else None
        if column == "path":
            wave, native = read_path(row["path"], int(i), cfg)
        elif column == "audio":
            wave, native = read_samples(row["audio"], rate, int(i))
        else:
            wave, native = decode_b64(row["audio_b64"], int(i), budget_s=cfg.max_audio_s - seconds)
        if column != "audio" and rate is not None and rate != native:
            raise ValueError(f"pyfunc input row {i}: column 'sample_rate' is {rate} but the {column!r} file's header "
                             f"says {native} Hz; leave 'sample_rate' empty for files, or give the file's rate")
        duration = len(wave) / native
        seconds += duration
        if seconds > cfg.max_audio_s:
            raise ValueError(f"pyfunc input row {i}: the request carries more than {cfg.max_audio_s:g} s of audio; "
                             "this model takes at most that per request (model_config max_audio_s)")
        audio.check_duration(f"pyfunc input row {i}, column '{column}'", duration, min_duration_s)
        audio.check_rate(f"pyfunc input row {i}, column 'sample_rate'", native)  # before any resampling
        ix, waves = groups.setdefault(native, ([], []))
        ix.append(int(i))
        waves.append(wave)
    return [(ix, waves, rate) for rate, (ix, waves) in groups.items()]


def is_set(value: Any) -> bool:
    """Whether a cell carries a value: not None/NaN (missing in some JSON records), not ''."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return True
    if isinstance(value, str):
        return bool(value)
    return not pd.isna(value)


def _row_rate(row: pd.Series, i: int) -> int | None:
    """The row's `sample_rate`: None when empty, else a whole positive number of Hz."""
    value = row["sample_rate"]
    if value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value)):
        return None
    where = f"pyfunc input row {i}, column 'sample_rate'"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a whole number of Hz, got {value!r}") from None
    if not math.isfinite(x) or x != int(x) or not 0 < x <= MAX_SAMPLE_RATE:
        raise ValueError(f"{where}: expected a whole number of Hz in 1..{MAX_SAMPLE_RATE}, got {value!r}")
    return int(x)


def read_samples(value: Any, rate: int | None, row: int) -> tuple[np.ndarray, int]:
    """An `audio` cell: finite, non-empty mono samples, at the row's (required) `sample_rate`."""
    if rate is None:
        raise ValueError(f"pyfunc input row {row}, column 'sample_rate': required for an 'audio' row "
                         "(the samples' rate in Hz)")
    return audio.check_samples(value, f"pyfunc input row {row}, column 'audio'"), rate


def read_path(value: Any, row: int, cfg: ServingConfig) -> tuple[np.ndarray, int]:
    """A `path` cell, when the configuration allows paths: the file, under ingest's rules."""
    where = f"pyfunc input row {row}, column 'path'"
    if not cfg.allow_path_input:
        raise ValueError(f"{where}: file paths are not accepted by this model (the file would be read on the "
                         "machine running it); send the file's bytes as 'audio_b64' instead (model_config "
                         "allow_path_input: true turns paths on, for local use)")
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a file path, got {type(value).__name__}")
    try:
        head = audio.check_header(value)
        x, sr = audio.decode(value)
        audio.check_decoded(value, len(x), head.frames)
    except audio.AudioError as e:
        raise audio.AudioError(f"{where} ({value})", e.reason) from None
    return x, sr


def decode_b64(value: Any, row: int, budget_s: float = math.inf) -> tuple[np.ndarray, int]:
    """An `audio_b64` cell as (mono float32 samples, the file's sample rate), decoded in memory the
    way `affectflow.audio` decodes a file (same rules, same texts), so resampling to the model's
    rate is the same too. A header that declares more than `budget_s` seconds is refused before
    decoding."""
    where = f"pyfunc input row {row}, column 'audio_b64'"
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:  # whitespace is dropped: `base64` without -w0 wraps its output at 76 characters
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as e:  # non-alphabet characters, bad padding, non-ASCII text
        raise ValueError(f"{where}: not valid base64 ({e})") from None
    try:
        head = audio.info(io.BytesIO(data), where)
    except audio.AudioError as e:
        detail = e.reason.removeprefix("unreadable audio (").removesuffix(")")
        raise ValueError(f"{where}: {len(data)} decoded bytes are not audio soundfile can read ({detail})") from None
    if head.frames <= 0:
        raise audio.AudioError(where, audio.NO_FRAMES)
    if head.duration > budget_s:
        raise ValueError(f"{where}: the request carries more than its limit of audio (this file alone declares "
                         f"{head.duration:.1f} s; model_config max_audio_s)")
    if short := audio.header_shortfall(head.extra_info):
        raise audio.AudioError(where, f"truncated audio: {short}")
    x, sr = audio.decode(io.BytesIO(data), where)
    audio.check_decoded(where, len(x), head.frames)
    return x, sr


def signature(classes: list[str], dimensions: list[str] | None = None) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec(DataType.string, "path", required=False),
        ColSpec(Array(DataType.double), "audio", required=False),
        ColSpec(DataType.long, "sample_rate", required=False),
        ColSpec(DataType.string, "audio_b64", required=False),
    ])
    outputs = Schema([*(ColSpec(DataType.double, c, required=False) for c in [*classes, *(dimensions or [])]),
                      ColSpec(DataType.string, "label", required=False), ColSpec(DataType.string, "status")])
    from affectflow.config import TimelineConfig

    t = TimelineConfig()  # the timeline option's request parameters (MLflow passes only declared ones)
    params = ParamSchema([ParamSpec("timeline", DataType.boolean, False), ParamSpec("window_s", DataType.double, t.window_s),
                          ParamSpec("hop_s", DataType.double, t.hop_s), ParamSpec("smooth", DataType.long, t.smooth)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(sample_rate: int, min_duration_s: float = 0.0) -> pd.DataFrame:
    """A short generated vowel-like waveform (no file needed to try the model), as long as the
    model's audio.min_duration_s asks."""
    from affectflow.corpora.demo import utterance

    wave = utterance("neutral", speaker=1, seed=0, sr=sample_rate, duration=max(EXAMPLE_SECONDS, min_duration_s))
    return pd.DataFrame({"audio": [wave.astype(np.float32).tolist()], "sample_rate": [sample_rate]})


def requirements(feature: str) -> list[str]:
    """pip requirements of a served model: the recognizer's, then its feature kind's (the table
    `affectflow.features.kinds`: openSMILE, transformers)."""
    import torch

    from affectflow.features.kinds import kind_spec

    reqs = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "pydantic>=2.5", "pyyaml",
            "soundfile", "soxr", "silero-vad>=6,<7", f"mlflow=={__import__('mlflow').__version__}"]
    return [*reqs, *kind_spec(feature).requirements()]


def log_pyfunc(model_dir: str | Path, name: str = "model", registered_model_name: str | None = None,
               config: ServingConfig | None = None) -> Any:
    """Log the model folder as a pyfunc into the active run; returns MLflow's ModelInfo. Every key
    of `config` (default: `ServingConfig()`) is logged, since MLflow overrides only logged keys."""
    import mlflow

    from affectflow.contracts.model_folder import read_model_meta
    from affectflow.features.kinds import kind_spec

    meta = read_model_meta(model_dir)
    artifacts = {MODEL_ARTIFACT: str(Path(model_dir).resolve())}
    carried = kind_spec(meta.feature).carried_files(meta.feature_config)
    if carried is not None:
        artifacts[ENCODER_ARTIFACT] = str(carried.resolve())
    # MLflow's notes on this way of logging (type hints, CloudPickle) are advice to other code: our
    # signature is explicit and the pickled object holds no state. Not shown to users.
    with warnings.catch_warnings(), _quiet("mlflow.pyfunc"):
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        return _log_model(mlflow, name, artifacts, meta, config, registered_model_name)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """`logger` shows errors only while the block runs."""
    lg = logging.getLogger(logger)
    before = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(before)


def _log_model(mlflow: Any, name: str, artifacts: dict[str, str], meta: Any, config: ServingConfig | None,
               registered_model_name: str | None) -> Any:
    import affectflow

    return mlflow.pyfunc.log_model(
        name=name,
        python_model=AffectflowPyfunc(),
        artifacts=artifacts,
        code_paths=[str(Path(affectflow.__file__).parent)],
        signature=signature(list(meta.classes), list(meta.dimensions.names) if meta.dimensions else None),
        input_example=input_example(meta.sample_rate, float(meta.audio.get("min_duration_s", 0.0))),
        model_config=(config or ServingConfig()).model_dump(mode="json"),
        pip_requirements=requirements(meta.feature),
        registered_model_name=registered_model_name,
    )
