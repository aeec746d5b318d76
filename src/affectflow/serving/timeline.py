"""Timelines for long recordings: one emotion estimate per hop instead of one label per file.

Why windows: the recognizers were trained on 2-4 s acted clips, so a 10-minute call averaged into
one label says nothing about when someone got angry. The recording is read in blocks with
soundfile (`SoundFile.blocks`: `window_s` long, `hop_s` apart, overlapping), each block is scored
like a short clip, and the window probabilities are smoothed by a centred moving average over
`smooth` windows (single windows of acted-speech models flicker). Memory is flat in the recording
length: at most `batch_size` windows of audio are held, plus one probability row per window.

Reading the result: window k covers [start_k, end_k]; its *cell* is the part of the recording
nearer to its centre than to any other window's centre, so the cells tile the file without
overlap and each time belongs to exactly one row (`segments`). Runs of cells with the same label
are merged into `changes`. A change between two emotions is located within one hop (the test
plants one). With `deploy_normalization: set` models, each batch of windows is standardised as one
set (use `batch_size` >= the model's `min_clips`).

Why `no_speech` segments: a call has pauses, hold music and line noise, and the model would give
each a confident emotion. Every window goes through the model's speech check (`affectflow.speech`,
its `audio.min_speech_s` / `audio.speech_threshold`, as the servers apply them to whole clips); a
window with less speech than that is not scored: its segment has status `no_speech`, no label and no
probabilities, and `changes` shows it as a run of its own. Smoothing never crosses such a window:
each run of consecutive speech windows is smoothed on its own (the emotion before a pause says
nothing about the one after it).

Arousal / valence: a model with a dimensional head (`models.dimensions`) also gives each segment
its `arousal` and `valence` (and `dominance` when trained on it) on [-1, 1], smoothed like the
probabilities (the `dimensions` columns after the classes in the CSV; a third panel in the PNG).
With `weak_labels` models they say where a window sits between the classes' typical arousal /
valence, not a rating of its own (README "Arousal / valence").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pydantic import ValidationError
from scipy.ndimage import uniform_filter1d

from affectflow import audio
from affectflow.config import TimelineConfig
from affectflow.speech import STATUS_NO_SPEECH, STATUS_OK, SpeechCheck
from affectflow.storage import atomic_write_text, save_figure

DECIMALS = 4
"""A segment's `status`: scored, or too little speech to say anything (no label, no probabilities)."""


def _windows(blocks: Iterator[np.ndarray], rate: int, sample_rate: int, cfg: TimelineConfig,
             where: str) -> Iterator[tuple[float, float, np.ndarray]]:
    """Blocks of `window` frames, `hop` apart (the last one shorter) -> (start_s, end_s, mono
    waveform at `sample_rate`); the tail becomes a full window ending at the end."""
    window, hop = _frames(rate, cfg)
    start, prev = 0, None
    for block in blocks:
        x = audio.to_mono(block)
        if not np.isfinite(x).all():
            raise audio.AudioError(where, f"window at {start / rate:.1f} s: {audio.NOT_FINITE}")
        first = start
        if len(x) < window and prev is not None:  # the tail: a full window ending at the recording's end
            x = np.concatenate([prev, x[len(prev) - hop:]])[-window:]
            first = start + len(block) - window
        yield first / rate, (first + len(x)) / rate, audio.resample(x, rate, sample_rate)
        prev = x
        start += hop


def _frames(rate: int, cfg: TimelineConfig) -> tuple[int, int]:
    """(window, hop) in frames at `rate`."""
    window = max(1, round(cfg.window_s * rate))
    return window, min(window, max(1, round(cfg.hop_s * rate)))


def windows(path: str | Path, sample_rate: int, cfg: TimelineConfig) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start_s, end_s, mono waveform at `sample_rate`) per window, streamed from the file; the last
    window ends at the file's end (a full window, overlapping its predecessor more; shorter than
    `window_s` only when the whole file is)."""
    head = audio.check_header(path)
    window, hop = _frames(head.sample_rate, cfg)
    try:
        with sf.SoundFile(str(path)) as f:
            blocks = f.blocks(blocksize=window, overlap=window - hop, dtype="float32", always_2d=False)
            yield from _windows(blocks, head.sample_rate, sample_rate, cfg, str(path))
    except sf.LibsndfileError as e:
        raise audio.AudioError(str(path), f"cannot decode audio ({e})") from None


def wave_windows(wave: np.ndarray, rate: int, sample_rate: int, cfg: TimelineConfig,
                 where: str = "waveform") -> Iterator[tuple[float, float, np.ndarray]]:
    """The same windows over audio already in memory (a served request)."""
    window, hop = _frames(rate, cfg)
    x = np.asarray(wave, np.float32)
    blocks = (x[a:a + window] for a in range(0, max(1, len(x) - (window - hop)), hop))
    return _windows(blocks, rate, sample_rate, cfg, where)


@dataclass
class Timeline:
    """Scored windows of one recording (probabilities already smoothed)."""

    path: str
    classes: list[str]
    starts: np.ndarray
    ends: np.ndarray
    probabilities: np.ndarray
    """(windows, classes), smoothed; all-0 rows for the windows without speech."""
    settings: TimelineConfig
    speech: np.ndarray | None = None
    """(windows,) bool: the window had the model's minimum of speech and was scored (None: all were)."""
    dimension_names: list[str] | None = None
    dimensions: np.ndarray | None = None
    """(windows, len(dimension_names)) on [-1, 1], smoothed; 0 rows without speech; None: no head."""

    @property
    def has_speech(self) -> np.ndarray:
        return np.ones(len(self.starts), bool) if self.speech is None else np.asarray(self.speech, bool)

    @property
    def statuses(self) -> list[str]:
        return [STATUS_OK if ok else STATUS_NO_SPEECH for ok in self.has_speech]

    @property
    def duration_s(self) -> float:
        return float(self.ends[-1]) if len(self.ends) else 0.0

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Non-overlapping [from, to) per window: midpoints between consecutive window centres."""
        centres = (self.starts + self.ends) / 2
        mids = (centres[1:] + centres[:-1]) / 2
        return np.r_[0.0, mids], np.r_[mids, self.duration_s]

    @property
    def labels(self) -> list[str | None]:
        """The top class per window; None for a window without speech."""
        return [self.classes[i] if ok else None
                for i, ok in zip(self.probabilities.argmax(axis=1), self.has_speech, strict=True)]

    def segments(self) -> list[dict[str, Any]]:
        """Per cell: start, end, status, label, class probabilities and the dimensions (None
        without speech; `dimensions` only for a model with a dimensional head)."""
        lo, hi = self.cells()
        out = [{"start_s": round(float(a), 3), "end_s": round(float(b), 3), "status": status, "label": lab,
                "probabilities": None if lab is None
                else {c: round(float(p), DECIMALS) for c, p in zip(self.classes, row, strict=True)}}
               for a, b, status, lab, row in zip(lo, hi, self.statuses, self.labels, self.probabilities, strict=True)]
        if self.dimensions is not None and self.dimension_names:
            for seg, row in zip(out, self.dimensions, strict=True):
                seg["dimensions"] = None if seg["label"] is None else {
                    d: round(float(v), DECIMALS) for d, v in zip(self.dimension_names, row, strict=True)}
        return out

    def changes(self) -> list[dict[str, Any]]:
        """Runs of consecutive cells with the same label: start, end, status, label, mean top
        probability; a stretch without speech is a run of its own (label and confidence None)."""
        lo, hi = self.cells()
        labels, statuses = self.labels, self.statuses
        top = self.probabilities.max(axis=1)
        runs: list[dict[str, Any]] = []
        first = 0
        for k in range(1, len(labels) + 1):
            if k == len(labels) or labels[k] != labels[first]:
                scored = labels[first] is not None
                runs.append({"start_s": round(float(lo[first]), 3), "end_s": round(float(hi[k - 1]), 3),
                             "status": statuses[first], "label": labels[first],
                             "confidence": round(float(top[first:k].mean()), DECIMALS) if scored else None})
                first = k
        return runs

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "duration_s": round(self.duration_s, 3), "classes": self.classes,
                "window_s": self.settings.window_s, "hop_s": self.settings.hop_s, "smooth": self.settings.smooth,
                **({"dimensions": self.dimension_names} if self.dimension_names else {}),
                "n_windows": len(self.starts), "n_no_speech": int((~self.has_speech).sum()),
                "segments": self.segments(), "changes": self.changes()}


def smooth(probs: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over `width` windows (edges repeat the end rows); rows still sum to 1."""
    if width <= 1 or len(probs) < 2:
        return probs
    return uniform_filter1d(np.asarray(probs, np.float64), size=width, axis=0, mode="nearest")


def smooth_speech(probs: np.ndarray, has_speech: np.ndarray, width: int) -> np.ndarray:
    """`smooth` over each run of consecutive speech windows on its own; rows without speech stay 0."""
    out = np.zeros_like(np.asarray(probs, np.float64))
    k, n = 0, len(has_speech)
    while k < n:
        if not has_speech[k]:
            k += 1
            continue
        end = k
        while end < n and has_speech[end]:
            end += 1
        out[k:end] = smooth(probs[k:end], width)
        k = end
    return out


def score_timeline(source: str | Path | tuple[np.ndarray, int], predict: Callable[[list[np.ndarray]], np.ndarray],
                   classes: Sequence[str], sample_rate: int, cfg: TimelineConfig, batch_size: int = 32,
                   name: str | None = None, speech: SpeechCheck | None = None,
                   dimensions: Sequence[str] = ()) -> Timeline:
    """Windows of `source` (a file, or (waveform, its rate)) scored `batch_size` at a time by
    `predict` (waveforms -> (n, C) probabilities, or (n, C + len(dimensions)): probabilities then
    the dimensions); windows failing `speech` (the model's check; None = off) are not scored and
    come out `no_speech`."""
    check = speech or SpeechCheck.off()
    if isinstance(source, tuple):
        path = name or "waveform"
        stream = wave_windows(source[0], source[1], sample_rate, cfg, path)
    else:
        path = str(source)
        stream = windows(source, sample_rate, cfg)
    starts: list[float] = []
    ends: list[float] = []
    has_speech: list[bool] = []
    parts: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for a, b, wave in stream:
        starts.append(a)
        ends.append(b)
        has_speech.append(check.reason(wave, sample_rate) is None)
        if not has_speech[-1]:
            continue
        batch.append(wave)
        if len(batch) >= batch_size:
            parts.append(np.asarray(predict(batch), np.float64))
            batch = []
    if batch:
        parts.append(np.asarray(predict(batch), np.float64))
    if not starts:
        raise audio.AudioError(path, audio.NO_SAMPLES)
    mask = np.asarray(has_speech, bool)
    scores = np.zeros((len(starts), len(classes) + len(dimensions)))
    if parts:
        scores[mask] = np.concatenate(parts)
    c = len(classes)
    dims = smooth_speech(scores[:, c:], mask, cfg.smooth) if dimensions else None
    return Timeline(path, list(classes), np.asarray(starts), np.asarray(ends),
                    smooth_speech(scores[:, :c], mask, cfg.smooth), cfg, mask,
                    list(dimensions) if dimensions else None, dims)


def timelines_json(timelines: Sequence[Timeline], model_uri: str) -> dict[str, Any]:
    return {"model": model_uri, "timelines": [t.to_json() for t in timelines]}


def timelines_csv(timelines: Sequence[Timeline]) -> str:
    """One row per segment (cell): path, start_s, end_s, status, label, one column per class
    (label and classes empty for a `no_speech` segment)."""
    buf = io.StringIO()
    classes = timelines[0].classes if timelines else []
    dims = (timelines[0].dimension_names or []) if timelines else []
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "start_s", "end_s", "status", "label", *classes, *dims])
    for t in timelines:
        for s in t.segments():
            probs = s["probabilities"] or {}
            values = s.get("dimensions") or {}
            writer.writerow([t.path, s["start_s"], s["end_s"], s["status"], s["label"] or "",
                             *(probs.get(c, "") for c in classes), *(values.get(d, "") for d in dims)])
    return buf.getvalue()


def plot_timeline(t: Timeline, path: str | Path) -> Path:
    """Stacked class probabilities over time, with the label run bar underneath; stretches
    without speech are grey bands in both (nothing is drawn for them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = t.cells()
    x = np.c_[lo, hi].ravel()
    y = np.repeat(t.probabilities, 2, axis=0).T
    colours = plt.get_cmap("tab10").colors
    with_dims = t.dimensions is not None and bool(t.dimension_names)
    fig, axes = plt.subplots(3 if with_dims else 2, 1, figsize=(11, 5.4 if with_dims else 3.6), sharex=True,
                             gridspec_kw={"height_ratios": [4, 1, 2] if with_dims else [4, 1]})
    a, b = axes[0], axes[1]
    if with_dims:
        dim_ax = axes[2]
        for j, name in enumerate(t.dimension_names or []):
            vals = np.where(t.has_speech, t.dimensions[:, j], np.nan)  # type: ignore[index]
            dim_ax.plot((lo + hi) / 2, vals, label=name)
        dim_ax.axhline(0, color="grey", lw=0.8)
        dim_ax.set(ylim=(-1.05, 1.05), ylabel="[-1, 1]")
        dim_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    a.stackplot(x, y, labels=t.classes, colors=colours[: len(t.classes)], alpha=0.85)
    a.set(ylabel="probability", ylim=(0, 1), title=f"{Path(t.path).name}: {t.settings.window_s:g} s windows, "
          f"{t.settings.hop_s:g} s hop, smoothed over {t.settings.smooth}")
    grey = "no speech"
    for run in t.changes():
        if run["label"] is None:  # no speech: a gap, not an emotion
            for ax in (a, b):
                ax.axvspan(run["start_s"], run["end_s"], color="0.8", zorder=3, lw=0, label=grey if ax is a else None)
            grey = None
            continue
        b.axvspan(run["start_s"], run["end_s"], color=colours[t.classes.index(run["label"])], alpha=0.85)
    a.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    b.set(yticks=[], xlabel="time (s)", xlim=(0, max(t.duration_s, 1e-3)))
    fig.tight_layout()
    return save_figure(fig, path)


def write_timelines(timelines: Sequence[Timeline], model_uri: str, out: str | Path, fmt: str) -> list[Path]:
    """`out` as JSON or CSV (atomically) and one PNG per recording beside it
    (`<out stem>.png`, or `<out stem>.<k>.png` for several); the PNG paths."""
    import json

    out = Path(out)
    text = timelines_csv(timelines) if fmt == "csv" else json.dumps(timelines_json(timelines, model_uri), indent=2) + "\n"
    atomic_write_text(out, text)
    one = len(timelines) == 1
    return [plot_timeline(t, out.with_name(f"{out.stem}.png" if one else f"{out.stem}.{k}.png"))
            for k, t in enumerate(timelines)]


REQUEST_KEYS = ("window_s", "hop_s", "smooth")


def requested_settings(parameters: Mapping[str, Any] | None, n_clips: int) -> TimelineConfig | None:
    """The served option: request parameters `timeline: true` (+ optional `window_s`, `hop_s`,
    `smooth`; defaults: `predict.timeline`'s) -> the settings; None for an ordinary request.
    A timeline request carries one recording; bad values are a ValueError naming the parameter."""
    params = dict(parameters or {})
    flag = params.get("timeline", False)
    if flag in (False, "false", "False", 0, None):
        return None
    if flag not in (True, "true", "True", 1):
        raise ValueError(f"parameter 'timeline': expected true or false, got {flag!r}")
    if n_clips != 1:
        raise ValueError(f"parameter 'timeline': a timeline request carries one recording, got {n_clips}")
    given = {k: params[k] for k in REQUEST_KEYS if k in params}
    try:
        return TimelineConfig(**given)
    except ValidationError as e:
        why = "; ".join(f"parameter '{'.'.join(map(str, err['loc']))}': {err['msg']}" if err["loc"]
                        else err["msg"] for err in e.errors())
        raise ValueError(f"timeline parameters {given}: {why}") from None
