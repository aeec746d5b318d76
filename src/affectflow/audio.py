"""Decode any format soundfile reads, down-mix to mono and resample (soxr) to the configured rate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(Exception):
    """Audio that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def info(path: str | Path) -> AudioInfo:
    """Header facts without decoding the samples."""
    try:
        i = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioError(path, f"unreadable audio ({e})") from None
    return AudioInfo(sample_rate=int(i.samplerate), channels=int(i.channels), frames=int(i.frames))


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file bytes: the content key of a clip in manifests and the feature cache."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise AudioError(path, f"cannot read file ({e.strerror})") from None
    return h.hexdigest()


def to_mono(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 1 else x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def load(path: str | Path, sample_rate: int, *, min_samples: int = 1) -> np.ndarray:
    """Mono float32 waveform at `sample_rate`; raises AudioError for empty, truncated or bad audio."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:
        raise AudioError(path, f"cannot decode audio ({e})") from None
    x = to_mono(np.asarray(x, dtype=np.float32))
    if x.size < min_samples:
        raise AudioError(path, "empty audio (no samples)")
    if not np.isfinite(x).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    return resample(x, int(sr), sample_rate)
