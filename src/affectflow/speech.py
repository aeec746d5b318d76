"""Is there speech in this clip? Silero VAD (the `silero-vad` package, MIT, weights inside it).

Why: the recognizer answers for any waveform, so silence, noise or music would get a confident
emotion. Every entry point (ingest through `on_bad_audio`, `affectflow predict`, the MLflow pyfunc,
the KServe predictor) asks `measure` how many seconds of a clip are speech and scores the clip only
when that reaches `audio.min_speech_s`; otherwise the clip's answer is "no speech", never a class.

How: Silero's TorchScript model runs on the CPU torch the package already needs (no onnxruntime),
on 32 ms frames at 16 kHz (any other rate goes through `affectflow.audio.resample`, the one
resampling path). A frame counts as speech when its probability reaches `audio.speech_threshold`.
Frames of digital silence (`SILENT_RMS`) are not speech without running the network (a clip of
zeros costs nothing), and the count stops as soon as it reaches the minimum (speech clips are
decided in their first second). False-reject and detection rates: benchmarks/speech_check.py.

No fallback: without the package the check raises `SpeechCheckUnavailable` (install
`silero-vad`, or set `audio.min_speech_s: 0` to turn the check off). An energy threshold cannot
tell noise or a tone from speech, which is the case the check exists for.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectflow import audio

VAD_RATE = 16000
FRAME = 512
"""Samples per Silero frame at 16 kHz (32 ms): the only frame size its 16 kHz model takes."""
SILENT_RMS = 1e-6
"""Frames below this RMS (-120 dBFS, under one 16-bit step: digital silence) are silence without
asking the network. Not higher: skipping the quiet frames of a recording changes the network's
state and made it miss shouted RAVDESS clips (1.7 % rejected at -80 dBFS)."""
NO_SPEECH = "no speech"
STATUS_OK = "ok"
STATUS_NO_SPEECH = "no_speech"
"""The per-clip / per-segment status every output carries (predict, the pyfunc, KServe, timelines)."""


class SpeechCheckUnavailable(RuntimeError):
    """The speech check is on (`audio.min_speech_s` > 0) but silero-vad is not installed."""


@dataclass(frozen=True)
class SpeechCheck:
    """The rule: at least `min_speech_s` seconds of frames whose speech probability reaches
    `threshold`. `min_speech_s == 0` turns the check off (every clip passes, nothing is loaded)."""

    min_speech_s: float
    threshold: float

    @classmethod
    def off(cls) -> SpeechCheck:
        """No check (every clip passes, nothing is loaded)."""
        return cls(min_speech_s=0.0, threshold=1.0)

    @classmethod
    def from_audio_config(cls, config: Any) -> SpeechCheck:
        """From `AudioConfig` or a model folder's stored `audio` dict (defaults fill missing keys)."""
        from affectflow.config import AudioConfig

        cfg = config if isinstance(config, AudioConfig) else AudioConfig.model_validate(
            {k: v for k, v in dict(config).items() if k in AudioConfig.model_fields})
        return cls(min_speech_s=cfg.min_speech_s, threshold=cfg.speech_threshold)

    @property
    def enabled(self) -> bool:
        return self.min_speech_s > 0

    def speech_s(self, wave: np.ndarray, sample_rate: int) -> float:
        """Seconds of speech found, counted up to `min_speech_s` (the scan stops there)."""
        if not self.enabled:
            return 0.0
        return measure(wave, sample_rate, self.threshold, stop_at_s=self.min_speech_s)

    def counter(self, sample_rate: int) -> SpeechCounter:
        """A counter for audio fed block by block (`reason_for` judges its total)."""
        return SpeechCounter(sample_rate, self.threshold, stop_at_s=self.min_speech_s)

    def reason(self, wave: np.ndarray, sample_rate: int) -> str | None:
        """None when the clip has enough speech, else the "no speech" text naming the setting."""
        if not self.enabled:
            return None
        return self.reason_for(self.speech_s(wave, sample_rate))

    def reason_for(self, found: float) -> str | None:
        if found >= self.min_speech_s:
            return None
        return (f"{NO_SPEECH}: {found:.2f} s of speech < {self.min_speech_s:g} s (audio.min_speech_s; "
                f"Silero VAD frames with probability >= {self.threshold:g})")


_local = threading.local()
_import_lock = threading.Lock()
_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch intra-op threads = 1 while any thread runs the VAD, then back to what it was.

    Silero runs one 32 ms frame per call: more threads only add spin-waiting, 20x slower on a
    busy 2-core machine (measured, benchmarks/RESULTS.md). The setting is process-wide, so calls
    from several threads share one save/restore (a count of users)."""
    import torch

    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            if _threads_before != 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_before != 1:
                torch.set_num_threads(_threads_before)


def _model() -> Any:
    """This thread's Silero model (its recurrent state is per call, so threads do not share one)."""
    model = getattr(_local, "model", None)
    if model is None:
        import torch

        with _import_lock:
            threads = torch.get_num_threads()
            try:
                from silero_vad import load_silero_vad
            except ImportError:
                raise SpeechCheckUnavailable(
                    "the speech check (audio.min_speech_s > 0) needs the silero-vad package: "
                    "pip install silero-vad, or set audio.min_speech_s: 0 to turn the check off") from None
            finally:
                torch.set_num_threads(threads)  # silero_vad sets 1 thread for the whole process on import
            model = _local.model = load_silero_vad(onnx=False)
    return model


class SpeechCounter:
    """Seconds of speech in audio fed block by block (a file streamed by ingest, or one waveform):
    each block is resampled to 16 kHz, cut into 32 ms frames (a partial frame waits for the next
    block) and run through this thread's Silero model, whose state carries across blocks.
    Counting stops once `stop_at_s` is reached (`done`)."""

    def __init__(self, sample_rate: int, threshold: float, stop_at_s: float = float("inf")):
        self.sample_rate = int(sample_rate)
        self.threshold = threshold
        self.stop_at_s = stop_at_s
        self.found = 0.0
        self._rest = np.zeros(0, np.float32)
        self._model: Any = None

    @property
    def done(self) -> bool:
        return self.found >= self.stop_at_s

    def feed(self, block: np.ndarray) -> None:
        if self.done:
            return
        x = np.concatenate([self._rest, audio.resample(np.asarray(block, np.float32), self.sample_rate, VAD_RATE)])
        n = len(x) // FRAME
        self._rest = x[n * FRAME:]
        self._frames(x[: n * FRAME].reshape(n, FRAME))

    def finish(self) -> float:
        """Score the last partial frame (zero-padded); the seconds of speech found."""
        if len(self._rest) and not self.done:
            last = np.zeros((1, FRAME), np.float32)
            last[0, : len(self._rest)] = self._rest
            self._rest = np.zeros(0, np.float32)
            self._frames(last)
        return self.found

    def _frames(self, frames: np.ndarray) -> None:
        loud = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) >= SILENT_RMS
        if not loud.any():
            return
        import torch

        if self._model is None:
            self._model = _model()
            self._model.reset_states()
        frame_s = FRAME / VAD_RATE
        with torch.inference_mode(), _one_torch_thread():
            for k in np.flatnonzero(loud):
                if float(self._model(torch.from_numpy(frames[k]), VAD_RATE)) >= self.threshold:
                    self.found += frame_s
                    if self.done:
                        return


def measure(wave: np.ndarray, sample_rate: int, threshold: float, stop_at_s: float = float("inf")) -> float:
    """Seconds of `wave` (mono float, any rate) whose Silero speech probability >= `threshold`;
    counting stops once `stop_at_s` is reached."""
    counter = SpeechCounter(sample_rate, threshold, stop_at_s)
    counter.feed(wave)
    return counter.finish()
