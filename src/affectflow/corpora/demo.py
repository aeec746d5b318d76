"""Generated emotional-speech-like audio, for tests and for the demo when no corpus is at hand.

Each clip is a glottal-pulse-like harmonic source through vowel formants whose pitch, pitch
movement, loudness, tempo and spectral tilt depend on the emotion class (the acoustic correlates
that real emotional speech shows: anger loud, high and bright; sadness low, slow and dark).
Speakers differ in base pitch and formant scale, so speaker-independent splits matter here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

# emotion -> (pitch factor, pitch range, loudness, syllable rate Hz, brightness)
PROFILES: dict[str, tuple[float, float, float, float, float]] = {
    "neutral": (1.00, 0.05, 0.30, 4.0, 0.5),
    "calm": (0.95, 0.03, 0.22, 3.2, 0.35),
    "happy": (1.30, 0.25, 0.45, 5.0, 0.75),
    "sad": (0.85, 0.04, 0.18, 2.5, 0.2),
    "angry": (1.25, 0.15, 0.75, 5.5, 1.0),
    "fearful": (1.45, 0.30, 0.35, 6.0, 0.6),
    "disgust": (0.90, 0.12, 0.40, 3.0, 0.55),
    "surprised": (1.50, 0.40, 0.50, 4.5, 0.7),
}
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (640, 1190, 2390)]


def utterance(emotion: str, speaker: int, seed: int, sr: int = 16000, duration: float = 1.5) -> np.ndarray:
    """One clip as float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    pf, prange, loud, rate, bright = PROFILES[emotion]
    female = speaker % 2 == 0
    f0_base = (210.0 if female else 120.0) * (1 + 0.08 * ((speaker * 7919) % 11 - 5) / 5) * pf
    formant_scale = (1.15 if female else 1.0) * (1 + 0.03 * ((speaker * 104729) % 7 - 3) / 3)
    n = int(sr * duration * rng.uniform(0.85, 1.15))
    t = np.arange(n) / sr
    f0 = f0_base * (1 + prange * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6.28)))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tilt = 1.0 + 1.5 * (1 - bright)
    src = sum(np.sin(k * phase) / k**tilt for k in range(1, 30))
    # Vowel sequence: one vowel per syllable, formant resonances as gain on harmonics' envelope.
    syl = np.floor(t * rate * rng.uniform(0.9, 1.1)).astype(int)
    out = np.zeros(n)
    for s in np.unique(syl):
        idx = syl == s
        f1, f2, f3 = (f * formant_scale for f in VOWELS[(s + seed) % len(VOWELS)])
        seg = src[idx]
        spec = np.fft.rfft(seg)
        freqs = np.fft.rfftfreq(seg.size, 1 / sr)
        env = sum(np.exp(-0.5 * ((freqs - f) / (60 + 0.08 * f)) ** 2) for f in (f1, f2, f3)) + 0.02
        out[idx] = np.fft.irfft(spec * env, n=seg.size)
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * ((t * rate) % 1.0))
    x = out * envelope
    x = x / (np.abs(x).max() + 1e-9) * loud + rng.normal(0, 0.003, n)
    return np.clip(x, -1, 1).astype(np.float32)


def make_ravdess_like(root: str | Path, actors: int = 8, emotions: tuple[str, ...] | None = None,
                      clips_per_emotion: int = 4, sr: int = 16000, duration: float = 1.5) -> Path:
    """A RAVDESS-layout corpus (`Actor_XX/03-01-EE-II-SS-RR-AA.wav`) of generated clips."""
    from affectflow.corpora.ravdess import EMOTIONS

    code_of = {v: k for k, v in EMOTIONS.items()}
    emotions = emotions or tuple(EMOTIONS.values())
    root = Path(root)
    for actor in range(1, actors + 1):
        d = root / f"Actor_{actor:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for emo in emotions:
            for i in range(clips_per_emotion):
                stmt, rep = i % 2 + 1, i // 2 % 2 + 1
                intensity = i // 4 % 2 + 1
                name = f"03-01-{code_of[emo]}-{intensity:02d}-{stmt:02d}-{rep:02d}-{actor:02d}.wav"
                seed = actor * 1000 + int(code_of[emo]) * 10 + i
                sf.write(d / name, utterance(emo, actor, seed, sr, duration), sr, subtype="PCM_16")
    return root
