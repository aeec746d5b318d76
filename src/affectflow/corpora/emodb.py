"""EmoDB (Burkhardt et al., 2005): `SSTTTEV.wav` — speaker, text, emotion letter, version.

Works on the original flat `wav/` folder and on class sub-folders alike: the label comes from
the file name, never the folder.
"""

from __future__ import annotations

from pathlib import Path

from affectflow.contracts.manifest import Utterance
from affectflow.corpora import audio_files

EMOTIONS = {
    "W": "angry", "L": "boredom", "E": "disgust", "A": "fearful",
    "F": "happy", "T": "sad", "N": "neutral",
}
MALE = {"03", "10", "11", "12", "15"}
FEMALE = {"08", "09", "13", "14", "16"}


def parse_name(path: Path) -> Utterance:
    stem = path.stem
    if len(stem) < 7 or not stem[:2].isdigit():
        raise ValueError(f"{path}: name is not EmoDB's SSTTTEV")
    if stem[5] not in EMOTIONS:
        raise ValueError(f"{path}: unknown EmoDB emotion code '{stem[5]}'")
    speaker = stem[:2]
    gender = "male" if speaker in MALE else "female" if speaker in FEMALE else ""
    return Utterance(path=str(path), speaker=speaker, label=EMOTIONS[stem[5]], gender=gender,
                     utt_id=stem, extra={"text": stem[2:5]})


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: EmoDB folder not found")
    return [parse_name(p) for p in audio_files(base)]
