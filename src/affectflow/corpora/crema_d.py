"""CREMA-D (Cao et al., 2014): `AudioWAV/AAAA_SSS_EEE_LL.wav` — actor, sentence, emotion, level.

91 actors (1001–1091), 12 sentences, six emotions, intensity LO/MD/HI or XX (unspecified).
Gender is not in the file name; it comes from the corpus's `VideoDemographics.csv` (columns
`ActorID`, `Sex`) when that file sits in the corpus root, and is unknown ("") otherwise.
If the root holds an `AudioWAV/` folder (the layout of the official repository, which also has
`AudioMP3/` copies of the same clips), only that folder is read, so no clip is counted twice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from affectflow.contracts.manifest import Utterance
from affectflow.corpora import audio_files

EMOTIONS = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fearful",
    "HAP": "happy", "NEU": "neutral", "SAD": "sad",
}
LEVELS = {"LO", "MD", "HI", "XX"}
SENTENCES = {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
DEMOGRAPHICS = "VideoDemographics.csv"
SEX = {"male": "male", "female": "female"}


def read_demographics(path: Path) -> dict[str, str]:
    """ActorID -> gender from VideoDemographics.csv; unknown Sex values become ""."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read CREMA-D demographics ({e})") from None
    missing = [c for c in ("ActorID", "Sex") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: CREMA-D demographics lack columns {missing}")
    return {a.strip(): SEX.get(s.strip().lower(), "") for a, s in zip(df["ActorID"], df["Sex"], strict=True)}


def parse_name(path: Path, genders: dict[str, str] | None = None) -> Utterance:
    parts = path.stem.split("_")
    if len(parts) != 4 or not (parts[0].isdigit() and len(parts[0]) == 4):
        raise ValueError(f"{path}: name is not CREMA-D's AAAA_SSS_EEE_LL")
    actor, sentence, code, level = parts
    if code not in EMOTIONS:
        raise ValueError(f"{path}: unknown CREMA-D emotion code '{code}'")
    if sentence not in SENTENCES:
        raise ValueError(f"{path}: unknown CREMA-D sentence code '{sentence}'")
    if level not in LEVELS:
        raise ValueError(f"{path}: unknown CREMA-D intensity code '{level}'")
    return Utterance(path=str(path), speaker=actor, label=EMOTIONS[code],
                     gender=(genders or {}).get(actor, ""), utt_id=path.stem,
                     extra={"sentence": sentence, "intensity": level})


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: CREMA-D folder not found")
    demo = base / DEMOGRAPHICS
    genders = read_demographics(demo) if demo.is_file() else {}
    audio_dir = base / "AudioWAV" if (base / "AudioWAV").is_dir() else base
    return [parse_name(p, genders) for p in audio_files(audio_dir)]
