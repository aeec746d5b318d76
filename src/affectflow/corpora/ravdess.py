"""RAVDESS (Livingstone & Russo, 2018): `Actor_XX/MM-VV-EE-II-SS-RR-AA.<ext>`.

Fields: modality, vocal channel (01 speech, 02 song), emotion, intensity, statement, repetition,
actor (odd = male, even = female).
"""

from __future__ import annotations

from pathlib import Path

from affectflow.contracts.manifest import Utterance
from affectflow.corpora import audio_files

EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
INTENSITY = {"01": "normal", "02": "strong"}


def parse_name(path: Path) -> Utterance:
    parts = path.stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{path}: name is not RAVDESS's MM-VV-EE-II-SS-RR-AA")
    emotion = EMOTIONS.get(parts[2])
    if emotion is None:
        raise ValueError(f"{path}: unknown RAVDESS emotion code '{parts[2]}'")
    actor = parts[6]
    return Utterance(
        path=str(path),
        speaker=actor,
        label=emotion,
        gender="male" if int(actor) % 2 else "female",
        utt_id=path.stem,
        intensity=INTENSITY.get(parts[3], ""),
        extra={"intensity": parts[3], "statement": parts[4], "channel": parts[1]},
    )


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: RAVDESS folder not found")
    return [parse_name(p) for p in audio_files(base)]
