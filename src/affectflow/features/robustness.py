"""Recording-condition copies: the same speech as if recorded through another channel and room.

Why: once each corpus is standardised by its own statistics, what still separates an unseen corpus
from the training ones is largely how it was recorded (microphone band, room, noise floor, level).
Copy k of corpus c applies one condition drawn for (c, k) to every clip of c, each clip with its
own noise and impulse-response draw, so that after per-(corpus, copy) standardisation the copy is
one more "corpus" with the same labels: a recording condition the recognizer has not seen, with
nothing else changed.

A condition is, each part switchable in `features.robustness`:
  * band-limiting: telephone band 300-3400 Hz, a low-pass at 2.5-6 kHz or a high-pass at 100-400 Hz
    (Butterworth, order 4), or none;
  * reverberation: a generated impulse response (exponentially decaying Gaussian noise with the
    condition's RT60, direct path kept, direct-to-reverberant ratio 0-10 dB);
  * additive noise: white, pink or brown, at the condition's SNR (each clip +- 3 dB);
  * gain, peak-limited to 0.99.
Every draw is seeded by (features.robustness.seed, corpus, copy) and the clip's sha256, so a copy
is reproducible, and cached by content like the clean features. No audio is written anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from affectflow.config import RobustnessConfig

COPY_SEP = "@r"
"""Store kind of copy k of kind K: f"{K}@r{k}" (e.g. compare@r1)."""
BANDS = ("none", "telephone", "lowpass", "highpass")
COLORS = ("white", "pink", "brown")


def copy_kind(kind: str, k: int) -> str:
    return f"{kind}{COPY_SEP}{k}"


def split_kind(kind: str) -> tuple[str, int]:
    """'compare@r2' -> ('compare', 2); a clean kind -> (kind, 0)."""
    base, sep, k = kind.rpartition(COPY_SEP)
    return (base, int(k)) if sep and k.isdigit() else (kind, 0)


def _seed(*parts: object) -> list[int]:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


@dataclass(frozen=True)
class Condition:
    """One simulated recording set-up (a channel and a room)."""

    band: str
    lowpass_hz: float
    highpass_hz: float
    reverb: bool
    rt60_s: float
    drr_db: float
    noise: bool
    color: str
    snr_db: float
    gain_db: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw_condition(cfg: RobustnessConfig, corpus: str, k: int) -> Condition:
    """The condition of copy `k` of `corpus` (the same for all of that corpus's clips)."""
    rng = np.random.default_rng(_seed("condition", cfg.seed, corpus, k))
    band = str(rng.choice(BANDS, p=[0.3, 0.25, 0.25, 0.2])) if cfg.band else "none"
    return Condition(
        band=band, lowpass_hz=float(rng.uniform(2500, 6000)), highpass_hz=float(rng.uniform(100, 400)),
        reverb=cfg.reverb and bool(rng.random() < 0.7), rt60_s=float(rng.uniform(*cfg.rt60_s)),
        drr_db=float(rng.uniform(0, 10)),
        noise=cfg.noise and bool(rng.random() < 0.8), color=str(rng.choice(COLORS)),
        snr_db=float(rng.uniform(*cfg.snr_db)), gain_db=float(rng.uniform(*cfg.gain_db)) if cfg.gain else 0.0)


def colored_noise(n: int, color: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Unit-variance white / pink (1/f power) / brown (1/f^2 power) noise."""
    w = rng.standard_normal(n)
    if color == "white" or n < 4:
        return w
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    f[0] = f[1]
    shaped = np.fft.irfft(np.fft.rfft(w) * (f ** -0.5 if color == "pink" else 1 / f), n)
    return shaped / (shaped.std() + 1e-12)


def impulse_response(cond: Condition, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Direct path (1.0) + a decaying noise tail, scaled to the condition's direct-to-reverberant ratio."""
    n = max(2, int(cond.rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / cond.rt60_s)  # -60 dB at RT60
    tail[: int(0.002 * sample_rate) + 1] = 0.0  # 2 ms gap after the direct sound
    tail *= np.sqrt(10 ** (-cond.drr_db / 10) / max(float(np.sum(tail ** 2)), 1e-12))
    tail[0] = 1.0
    return tail


def apply(x: np.ndarray, sample_rate: int, cond: Condition, rng: np.random.Generator) -> np.ndarray:
    """`x` (mono float32) through the condition; same length, float32, |x| <= 0.99."""
    from scipy import signal  # here: scipy.signal costs seconds to import, and only copies need it

    y = np.asarray(x, np.float64)
    nyquist = sample_rate / 2
    if cond.band == "telephone" and nyquist > 3400:
        y = signal.sosfilt(signal.butter(4, [300, 3400], "bandpass", fs=sample_rate, output="sos"), y)
    elif cond.band == "lowpass" and nyquist > cond.lowpass_hz:
        y = signal.sosfilt(signal.butter(4, cond.lowpass_hz, "lowpass", fs=sample_rate, output="sos"), y)
    elif cond.band == "highpass":
        y = signal.sosfilt(signal.butter(4, cond.highpass_hz, "highpass", fs=sample_rate, output="sos"), y)
    if cond.reverb:
        y = signal.fftconvolve(y, impulse_response(cond, rng, sample_rate))[: len(y)]
    if cond.noise:
        power = float(np.mean(y ** 2))
        if power > 0:
            snr = cond.snr_db + rng.uniform(-3, 3)
            noise = colored_noise(len(y), cond.color, rng, sample_rate)
            y = y + noise * np.sqrt(power / 10 ** (snr / 10) / max(float(np.mean(noise ** 2)), 1e-12))
    y = y * 10 ** (cond.gain_db / 20)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > 0.99:
        y = y * (0.99 / peak)
    return y.astype(np.float32)


def recording_copy(x: np.ndarray, sample_rate: int, cfg: RobustnessConfig, corpus: str, k: int,
                   sha256: str) -> np.ndarray:
    """Copy `k` of one clip of `corpus` (its draws seeded by the clip's content hash)."""
    rng = np.random.default_rng(_seed("clip", cfg.seed, corpus, k, sha256))
    return apply(x, sample_rate, draw_condition(cfg, corpus, k), rng)
