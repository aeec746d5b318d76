"""EMOVO (Costantini et al., LREC 2014), Italian: `SPK/EMO-SPK-SENT.*`, e.g. `f1/rab-f1-b1.flac`.

Speakers f1-f3 (female) and m1-m3 (male); emotion codes are Italian: rab anger, gio joy, neu
neutral, tri sadness, pau fear, dis disgust, sor surprise. The label comes from the file name.
"""

from __future__ import annotations

from pathlib import Path

from affectflow.contracts.manifest import Utterance
from affectflow.corpora import audio_files

EMOTIONS = {"rab": "angry", "gio": "happy", "neu": "neutral", "tri": "sad", "pau": "fearful",
            "dis": "disgust", "sor": "surprised"}


def parse_name(path: Path) -> Utterance:
    parts = path.stem.split("-")
    if len(parts) != 3:
        raise ValueError(f"{path}: name is not EMOVO's EMO-SPK-SENT")
    emo, speaker, sentence = parts
    if emo not in EMOTIONS:
        raise ValueError(f"{path}: unknown EMOVO emotion code '{emo}' (known: {sorted(EMOTIONS)})")
    gender = {"f": "female", "m": "male"}.get(speaker[:1], "")
    return Utterance(path=str(path), speaker=speaker, label=EMOTIONS[emo], gender=gender,
                     utt_id=f"{speaker}/{path.stem}", extra={"sentence": sentence})


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: EMOVO folder not found")
    return [parse_name(p) for p in audio_files(base)]
