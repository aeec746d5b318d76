"""Decode any format soundfile reads, down-mix to mono and resample (soxr) to the configured rate.

Also the rules for audio that cannot be used, one set for every entry point (ingest, the features
stage, `affectflow predict`, the served pyfunc), with one text per reason, so a clip is refused for
the same reason in the same words wherever it shows up.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

NOT_FOUND = "file not found"
NOT_FINITE = "audio contains NaN or infinite samples"
NO_SAMPLES = "empty audio (no samples)"
NO_FRAMES = "empty audio (0 frames)"
MIN_SAMPLE_RATE = 1000
"""Lowest sample rate taken from a file header (Hz). Below it the header is wrong or the file is not
audio: a 124 KB WAV declaring 1 Hz would be resampled to 16 kHz as 17 hours (19 GB)."""
MAX_SAMPLE_RATE = 768_000
"""Highest sample rate taken (Hz); more is a unit mistake, not audio."""
MAX_DECODE_S = 4 * 3600.0
"""Longest file decoded whole (seconds, from its header, before decoding); `affectflow predict`
reads longer files window by window and never decodes them whole."""
INT16_FULL_SCALE = 32768.0
"""Float samples that are whole numbers within ±this are int16 values stored as floats: rescaled."""
CODEC_HEADROOM = 1.5
"""Float samples up to this peak are clipped to ±1, not refused: lossy decoders (MP3, Opus) and
resamplers overshoot full scale a little on loud audio, and that is still audio."""

log = logging.getLogger(__name__)

# libsndfile's header log flags a chunk whose declared size disagrees with the file, e.g.
# "data : 16656 (should be 8306)": the file was cut after its header was written.
_CHUNK_SIZE = re.compile(r"^\s*(?P<chunk>\S+)\s*:\s*(?P<declared>\d+)\s*\(should be (?P<actual>\d+)\)", re.M)
# Writers that stream to a pipe cannot seek back to fix the header and leave a placeholder size at or
# above this (sox 0x7ffff000, ffmpeg 0xffffffff); such files are not truncated, just unsized.
_UNSIZED = 0x7FFFF000
_HEADER_SLACK = 8  # bytes: the size of one chunk header
_DECODED_SHARE = 0.99
"""A decode may come up this much short of the header's frame count (codec priming/padding)."""


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file (or request row) and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    extra_info: str = ""
    """libsndfile's header log (chunk sizes), see `header_shortfall`."""

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def info(path: str | Path | io.BytesIO, name: str | Path | None = None) -> AudioInfo:
    """Header facts without decoding the samples (a path, or encoded bytes named by `name`)."""
    where = name if name is not None else path
    try:
        i = sf.info(path if isinstance(path, io.BytesIO) else str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioError(str(where), f"unreadable audio ({_sf_reason(e, path)})") from None
    return AudioInfo(sample_rate=int(i.samplerate), channels=int(i.channels), frames=int(i.frames),
                     extra_info=str(getattr(i, "extra_info", "")))


def _sf_reason(e: Exception, source: object) -> str:
    """libsndfile's message, without the `<_io.BytesIO object at 0x...>` it names in-memory files by."""
    text = str(e)
    return text.replace(f"Error opening {source!r}: ", "") if isinstance(source, io.BytesIO) else text


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
    """The one resampling path (soxr HQ) for every rate. The output is clipped to [-1, 1]: a
    full-scale input overshoots slightly after filtering, and openSMILE's int16 conversion would
    wrap those samples to the other sign."""
    if sr_in == sr_out:
        return x
    check_rate(f"resampling from {sr_in} Hz", sr_in)
    y = soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)
    return np.clip(y, -1.0, 1.0, out=y)


def check_rate(where: str | Path, sample_rate: int) -> None:
    """A sample rate in MIN_SAMPLE_RATE..MAX_SAMPLE_RATE, checked before anything is decoded or resampled."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(where, f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
                                "(a wrong header, or not audio)")


def range_problem(x: np.ndarray) -> str | None:
    """Why float samples cannot be used as they are: None (within ±1), "clip" (a codec's overshoot,
    up to CODEC_HEADROOM), "int16" (whole numbers within ±32768: int16 values stored as floats) —
    both repaired by `check_range` — or the refusal text."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 1.0:
        return None
    if peak <= INT16_FULL_SCALE and np.array_equal(x, np.round(x)):
        return "int16"
    if peak <= CODEC_HEADROOM:
        return "clip"
    return (f"samples outside [-1, 1] (peak {peak:.4g}): float audio must be scaled to [-1, 1] (a codec's "
            f"overshoot up to ±{CODEC_HEADROOM:g} is clipped, int16 values as floats are rescaled; anything else "
            "is refused, not wrapped)")


def check_range(x: np.ndarray, where: str | Path) -> np.ndarray:
    """Float samples within ±1; a codec's overshoot (up to CODEC_HEADROOM) is clipped, int16 values
    stored as floats are rescaled (with a warning); other data outside ±1 is refused: openSMILE would
    wrap it (neutral 0.93 became angry 1.00)."""
    why = range_problem(x)
    if why is None:
        return x
    if why == "clip":
        return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)
    if why == "int16":
        log.warning("%s: float samples are whole numbers up to %d: taken as int16 values and rescaled by 1/32768",
                    where, int(np.max(np.abs(x))))
        return (x / INT16_FULL_SCALE).astype(np.float32)
    raise AudioError(where, why)


# ----------------------------------------------------------------------------- the rules
def header_shortfall(log: str) -> str | None:
    """Why a container (WAV, AIFF, W64, ...) is truncated, from libsndfile's header log; else None.

    libsndfile quietly shortens the frame count of a cut WAV to what is there, so decoding it
    succeeds; only the declared chunk sizes still show that audio is missing. A shortfall of up to
    `_HEADER_SLACK` bytes is tolerated: some writers count the RIFF size from the file start or drop
    the pad byte, which is a header quirk, not lost audio.
    """
    for m in _CHUNK_SIZE.finditer(log):
        declared, actual = int(m["declared"]), int(m["actual"])
        if actual < declared - _HEADER_SLACK and declared < _UNSIZED:
            return f"'{m['chunk']}' chunk declares {declared} bytes but the file holds {actual}"
    return None


def check_header(path: str | Path) -> AudioInfo:
    """The checks that need no decode: the file exists, its header reads, it declares frames and
    its chunk sizes agree with the file's length."""
    p = Path(path)
    if not p.is_file():
        raise AudioError(path, NOT_FOUND if not p.exists() else "not a file")
    head = info(path)
    if head.frames <= 0:
        raise AudioError(path, NO_FRAMES)
    check_rate(path, head.sample_rate)
    short = header_shortfall(head.extra_info)
    if short:
        raise AudioError(path, f"truncated audio: {short}")
    return head


def check_decoded(where: str | Path, decoded: int, declared: int) -> None:
    """A decode that stops well before the header's frame count is a cut (or corrupt) file."""
    if decoded < declared * _DECODED_SHARE:
        raise AudioError(where, f"truncated audio: header says {declared} frames, decoded {decoded}")


def check_duration(where: str | Path, seconds: float, min_duration_s: float) -> None:
    if seconds < min_duration_s:
        raise AudioError(where, f"too short: {seconds:.3f} s < {min_duration_s} s (audio.min_duration_s)")


def check_samples(x: Any, where: str | Path) -> np.ndarray:
    """Samples given as numbers (a request's waveform): mono float32, non-empty, finite."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise AudioError(where, "expected a list of numbers (mono samples)") from None
    if arr.ndim == 2 and arr.shape[1] <= 8:  # (frames, channels)
        arr = to_mono(arr)
    if arr.ndim != 1:
        raise AudioError(where, f"expected mono samples (a flat list of numbers), got shape {arr.shape}")
    if arr.size == 0:
        raise AudioError(where, NO_SAMPLES)
    if not np.isfinite(arr).all():
        raise AudioError(where, NOT_FINITE)
    return check_range(arr, where)


def window_spans(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """[start, stop) sample spans covering n samples: one span when n <= window, else windows
    `hop` apart with the last one ending at n (so every window is full length)."""
    if n <= window:
        return [(0, n)]
    starts = [*range(0, n - window, hop), n - window]
    return [(s, s + window) for s in starts]


# ----------------------------------------------------------------------------- decoding
def decode(source: str | Path | io.BytesIO, name: str | Path | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, native sample rate) of a file or of encoded bytes named by `name`;
    raises AudioError for undecodable, empty or non-finite audio."""
    where = name if name is not None else source
    try:
        f = sf.SoundFile(source if isinstance(source, io.BytesIO) else str(source))
    except Exception as e:
        raise AudioError(str(where), f"cannot decode audio ({_sf_reason(e, source)})") from None
    with f:  # the header's rate and length are checked before any sample is decoded
        check_rate(str(where), int(f.samplerate))
        if f.frames > MAX_DECODE_S * f.samplerate:
            raise AudioError(str(where), f"{f.frames / f.samplerate:.0f} s long: more than {MAX_DECODE_S:.0f} s is "
                                         "not decoded whole")
        try:
            x = f.read(dtype="float32", always_2d=False)
        except Exception as e:
            raise AudioError(str(where), f"cannot decode audio ({_sf_reason(e, source)})") from None
        sr = int(f.samplerate)
    x = to_mono(np.asarray(x, dtype=np.float32))
    if x.size == 0:
        raise AudioError(str(where), NO_SAMPLES)
    if not np.isfinite(x).all():
        raise AudioError(str(where), NOT_FINITE)
    return check_range(x, str(where)), sr


S3_SCHEME = "s3://"


def read_source(path: str | Path) -> bytes:
    """A clip's bytes: a local file, or an s3:// URI read through the storage layer (a manifest of
    corpora on S3 names its clips by URI, so any pod resolves them)."""
    if str(path).startswith(S3_SCHEME):
        from affectflow.storage import s3

        try:
            return s3.read_bytes(str(path))
        except s3.S3NotFoundError:
            raise AudioError(path, NOT_FOUND) from None
        except s3.S3Error as e:
            raise AudioError(path, f"cannot read object ({e})") from None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AudioError(path, NOT_FOUND if isinstance(e, FileNotFoundError) else f"cannot read file ({e.strerror})") from None


def load(path: str | Path, sample_rate: int, *, expect_sha256: str | None = None) -> np.ndarray:
    """Mono float32 waveform at `sample_rate`; raises AudioError for empty, truncated or bad audio.

    With `expect_sha256` the file is read once, its bytes are checked against the hash (the
    manifest's content key) and decoded from memory: a file changed since ingest is refused rather
    than stored under a content key that is no longer its own."""
    if expect_sha256 is None and not str(path).startswith(S3_SCHEME):
        x, sr = decode(path)
        return resample(x, sr, sample_rate)
    data = read_source(path)
    if expect_sha256 is None:
        x, sr = decode(io.BytesIO(data), path)
        return resample(x, sr, sample_rate)
    got = hashlib.sha256(data).hexdigest()
    if got != expect_sha256:
        raise AudioError(path, f"file changed since ingest: {len(data)} bytes with sha256 {got[:12]}…, the "
                               f"manifest says {expect_sha256[:12]}…; re-run ingest")
    x, sr = decode(io.BytesIO(data), path)
    return resample(x, sr, sample_rate)
