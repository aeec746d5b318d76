"""SAVEE (Surrey Audio-Visual Expressed Emotion; Jackson & Haq, 2014): four male speakers.

Layouts seen in the wild: `DC/a01.wav`, `AudioData/DC/a01.wav` (the original release) and a flat
`DC_a01.wav` (common re-packagings). The speaker comes from the name prefix when there is one,
else from the parent folder. Emotion code + number: a anger, d disgust, f fear, h happiness,
n neutral, sa sadness, su surprise.
"""

from __future__ import annotations

import re
from pathlib import Path

from affectflow.contracts.manifest import Utterance
from affectflow.corpora import audio_files

EMOTIONS = {
    "a": "angry", "d": "disgust", "f": "fearful", "h": "happy",
    "n": "neutral", "sa": "sad", "su": "surprised",
}
SPEAKERS = {"DC": "male", "JE": "male", "JK": "male", "KL": "male"}
_FLAT = re.compile(r"^(?P<spk>[A-Za-z]{2})_(?P<code>[A-Za-z]+)(?P<num>\d+)$")
_NESTED = re.compile(r"^(?P<code>[A-Za-z]+)(?P<num>\d+)$")


def parse_name(path: Path) -> Utterance:
    flat = _FLAT.match(path.stem)
    m = flat or _NESTED.match(path.stem)
    if m is None:
        raise ValueError(f"{path}: name is not SAVEE's [SPK_]<code><number>")
    spk = (flat.group("spk") if flat else path.parent.name).upper()
    if spk not in SPEAKERS:
        raise ValueError(f"{path}: unknown SAVEE speaker code '{spk}'")
    code = m.group("code").lower()
    if code not in EMOTIONS:
        raise ValueError(f"{path}: unknown SAVEE emotion code '{code}'")
    return Utterance(path=str(path), speaker=spk, label=EMOTIONS[code], gender=SPEAKERS[spk],
                     utt_id=f"{spk}_{code}{m.group('num')}", extra={"sentence": f"{code}{m.group('num')}"})


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: SAVEE folder not found")
    return [parse_name(p) for p in audio_files(base)]
