"""TESS (Toronto Emotional Speech Set; Dupuis & Pichora-Fuller, 2010): `OAF_angry/OAF_back_angry.wav`.

Two female speakers (OAF older, YAF younger) say "Say the word ___" with 200 target words in seven
emotions. The label comes from the file name's last part (`SPK_word_emotion`), never the folder,
whose spelling varies between copies (`OAF_Pleasant_surprise`, `YAF_pleasant_surprised`, ...).
"""

from __future__ import annotations

from pathlib import Path

from affectflow.contracts.manifest import Utterance
from affectflow.corpora import audio_files

EMOTIONS = {
    "angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
    "neutral": "neutral", "sad": "sad", "ps": "surprised",
    "pleasant_surprise": "surprised", "pleasant_surprised": "surprised",
}
SPEAKERS = {"OAF": "female", "YAF": "female"}


def parse_name(path: Path) -> Utterance:
    parts = path.stem.split("_")
    if len(parts) < 3:
        raise ValueError(f"{path}: name is not TESS's SPK_word_emotion")
    speaker = parts[0].upper()
    if speaker not in SPEAKERS:
        raise ValueError(f"{path}: unknown TESS speaker code '{parts[0]}'")
    code = "_".join(parts[2:]).lower()
    if code not in EMOTIONS:
        raise ValueError(f"{path}: unknown TESS emotion code '{code}'")
    word = parts[1].lower()
    return Utterance(path=str(path), speaker=speaker, label=EMOTIONS[code], gender=SPEAKERS[speaker],
                     utt_id=f"{speaker}_{word}_{code}", extra={"word": word})


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: TESS folder not found")
    return [parse_name(p) for p in audio_files(base)]
