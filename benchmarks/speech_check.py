"""The speech check (`affectflow.speech`, Silero VAD): how often it rejects real speech, and whether
it catches input that is not speech.

False rejects: EVERY clip of the four corpora in ../shared/data (RAVDESS, EmoDB, TESS, EMOVO, all
emotions, not just the four classes), decoded at 16 kHz by `affectflow.audio.load` and judged by
the rule the product ships (params.yaml `audio.min_speech_s`, `audio.speech_threshold`). A clip is a
false reject when the rule says "no speech": every clip of these corpora is speech.

Detection: generated non-speech, `--per-kind` clips of `--seconds` each per kind, random seeds:
digital silence, silence with dither, white / pink / brown noise at several levels, pure tones,
major/minor chords, and a music-like sequence (a chord progression with note envelopes and a
melody). A clip is detected when the rule says "no speech". The generated "speech-like" demo clips
(`affectflow.corpora.demo`, vowel formants on a harmonic source) are reported too, for information:
they are what the unit tests use, and they are not speech.

    .venv/bin/python benchmarks/speech_check.py                 # every corpus clip
    .venv/bin/python benchmarks/speech_check.py --sample 400    # a fixed random sample per corpus
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPORA = ("ravdess", "emodb", "tess", "emovo")
RATE = 16000


def corpus_files(root: Path, name: str) -> list[Path]:
    from affectflow.corpora import audio_files

    return audio_files(root / name) if (root / name).is_dir() else []


def _noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ∝ 1/f**exponent (0 white, 1 pink, 2 brown), peak-normalised."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return x / np.abs(x).max()


def _chord(t: np.ndarray, root: float, minor: bool) -> np.ndarray:
    third = root * 2 ** ((3 if minor else 4) / 12)
    fifth = root * 2 ** (7 / 12)
    return sum(np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t) for f in (root, third, fifth)) / 4


def _music(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four chords a bar with piano-like decays, plus a melody of eighth notes: a generated song."""
    t = np.arange(n) / RATE
    out = np.zeros(n)
    bar = int(RATE * rng.uniform(0.4, 0.7))
    for k, start in enumerate(range(0, n, bar)):
        seg = slice(start, min(n, start + bar))
        tt = t[seg] - t[start]
        root = 220 * 2 ** (rng.integers(0, 12) / 12)
        out[seg] += _chord(tt, root, bool(k % 2)) * np.exp(-3 * tt)
        for s in range(0, seg.stop - seg.start, bar // 4):
            note = 440 * 2 ** (rng.integers(0, 12) / 12)
            m = slice(seg.start + s, min(seg.stop, seg.start + s + bar // 4))
            tm = t[m] - t[m.start]
            out[m] += 0.4 * np.sin(2 * np.pi * note * tm) * np.exp(-6 * tm)
    return out / np.abs(out).max()


def nonspeech_kinds() -> dict[str, Callable[[np.random.Generator, int], np.ndarray]]:
    t = lambda n: np.arange(n) / RATE  # noqa: E731
    return {
        "digital silence": lambda r, n: np.zeros(n),
        "silence + dither (-90 dBFS)": lambda r, n: 3e-5 * r.standard_normal(n),
        "white noise -40 dBFS": lambda r, n: 0.01 * _noise(r, n, 0),
        "white noise -6 dBFS": lambda r, n: 0.5 * _noise(r, n, 0),
        "pink noise -20 dBFS": lambda r, n: 0.1 * _noise(r, n, 1),
        "pink noise -3 dBFS": lambda r, n: 0.7 * _noise(r, n, 1),
        "brown noise -6 dBFS": lambda r, n: 0.5 * _noise(r, n, 2),
        "pure tone (100-2000 Hz)": lambda r, n: 0.5 * np.sin(2 * np.pi * r.uniform(100, 2000) * t(n)),
        "chord (major/minor triad)": lambda r, n: 0.8 * _chord(t(n), r.uniform(110, 440), bool(r.integers(2))),
        "music-like (chords + melody)": lambda r, n: 0.8 * _music(r, n),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--sample", type=int, default=0, help="clips per corpus, fixed random sample (0: every clip)")
    ap.add_argument("--per-kind", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from affectflow import audio
    from affectflow.config import load_params
    from affectflow.corpora.demo import PROFILES, utterance
    from affectflow.speech import SpeechCheck

    params = load_params(args.params)
    check = SpeechCheck.from_audio_config(params.audio)
    print(f"# speech check: min_speech_s={check.min_speech_s} threshold={check.threshold}; "
          f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    root = Path(args.data)
    print("\n| corpus | clips | rejected (no speech) | false-reject rate | s / clip |\n|---|---:|---:|---:|---:|")
    total = rejected_all = 0
    rejected_names: list[str] = []
    for name in CORPORA:
        files = corpus_files(root, name)
        if not files:
            print(f"| {name} | absent | | | |")
            continue
        if args.sample and len(files) > args.sample:
            pick = np.random.default_rng(args.seed).choice(len(files), args.sample, replace=False)
            files = [files[i] for i in sorted(pick)]
        t0 = time.perf_counter()
        rejected = 0
        for f in files:
            x = audio.load(f, RATE)
            if check.reason(x, RATE) is not None:
                rejected += 1
                rejected_names.append(str(f.relative_to(root)))
        dt = (time.perf_counter() - t0) / len(files)
        total += len(files)
        rejected_all += rejected
        print(f"| {name} | {len(files)} | {rejected} | {100 * rejected / len(files):.2f} % | {dt:.3f} |")
    if total:
        print(f"| **all** | {total} | {rejected_all} | **{100 * rejected_all / total:.2f} %** | |")
    for n in rejected_names[:20]:
        print(f"  rejected: {n}")

    n = int(args.seconds * RATE)
    print(f"\n| input ({args.seconds:g} s each) | clips | said no speech | detection rate | max speech s found |"
          "\n|---|---:|---:|---:|---:|")
    for k, (kind, make) in enumerate(nonspeech_kinds().items()):
        hits, most = 0, 0.0
        for i in range(args.per_kind):
            rng = np.random.default_rng([args.seed, k, i])
            x = make(rng, n).astype(np.float32)
            hits += check.reason(x, RATE) is not None
            most = max(most, check.speech_s(x, RATE))
        print(f"| {kind} | {args.per_kind} | {hits} | {100 * hits / args.per_kind:.0f} % | {most:.2f} |")
    demo = [utterance(e, s, 100 + i) for i, (e, s) in enumerate((e, s) for e in PROFILES for s in range(5))]
    said = sum(check.reason(x, RATE) is not None for x in demo)
    print(f"| (info) generated demo 'speech' (affectflow.corpora.demo) | {len(demo)} | {said} | "
          f"{100 * said / len(demo):.0f} % | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
