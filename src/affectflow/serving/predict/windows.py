"""One input opened and cut into model-rate windows (long clips read one window at a time),
decoded ahead in threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from affectflow import audio
from affectflow.speech import SpeechCheck

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
