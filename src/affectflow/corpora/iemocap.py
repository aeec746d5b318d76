"""IEMOCAP (Busso et al., 2008): five sessions of dyadic conversations, one man and one woman each.

Audio: `SessionN/sentences/wav/<dialog>/<utt>.wav`; labels: one line per utterance in
`SessionN/dialog/EmoEvaluation/<dialog>.txt`:

    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

i.e. time span, utterance id, the annotators' majority category and mean [valence, arousal,
dominance] on a 1–5 scale (stored as is). The label files drive the adapter: every labelled
utterance becomes a row, and a labelled utterance whose wav is missing is reported by ingest's
probe like any other missing file. `xxx` (no majority among annotators) becomes `other`, with
`extra["raw_label"] = "xxx"` so ingest counts those drops apart from `oth`.
Speaker = session + the utterance speaker's gender (`Ses01F_impro01_F000` -> `Ses01_F`): the two
actors of a session are told apart by the last part of the id, not by `Ses01F` (who led the dialog).
"""

from __future__ import annotations

import re
from pathlib import Path

from affectflow.contracts.manifest import Utterance

EMOTIONS = {
    "ang": "angry", "hap": "happy", "exc": "excited", "sad": "sad", "neu": "neutral",
    "fru": "frustrated", "sur": "surprised", "fea": "fearful", "dis": "disgust",
    "oth": "other", "xxx": "other",
}
GENDERS = {"F": "female", "M": "male"}
_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<code>\S+)\s+\[(?P<vad>[^\]]*)\]"
)
_UTT = re.compile(r"^(?P<session>Ses\d\d)[MF]_.+_(?P<gender>[MF])\d+$")


def parse_label_file(path: Path) -> list[Utterance]:
    """Utterances of one EmoEvaluation file; annotator lines (`C-E1:`, `A-E2:`) are skipped."""
    session_dir = path.parents[2]
    out: list[Utterance] = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        m = _LINE.match(line)
        if m is None:
            continue
        utt, code = m.group("utt"), m.group("code").lower()
        where = f"{path}: line {lineno}"
        if code not in EMOTIONS:
            raise ValueError(f"{where}: unknown IEMOCAP emotion code '{m.group('code')}'")
        u = _UTT.match(utt)
        if u is None:
            raise ValueError(f"{where}: utterance id '{utt}' is not IEMOCAP's SesNNX_<dialog>_<G>NNN")
        try:
            vad = [float(v) for v in m.group("vad").split(",")]
        except ValueError:
            vad = []
        if len(vad) != 3:
            raise ValueError(f"{where}: [valence, arousal, dominance] of '{utt}' is not three numbers")
        dialog = utt.rsplit("_", 1)[0]
        out.append(Utterance(
            path=str(session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"),
            speaker=f"{u.group('session')}_{u.group('gender')}",
            label=EMOTIONS[code],
            gender=GENDERS[u.group("gender")],
            valence=vad[0], arousal=vad[1], dominance=vad[2], utt_id=utt,
            extra={"raw_label": code, "dialog": dialog, "dominance": str(vad[2]),
                   "start": m.group("start"), "end": m.group("end")},
        ))
    return out


def prepare(root: str) -> list[Utterance]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: IEMOCAP folder not found")
    label_files = sorted(p for p in base.glob("Session*/dialog/EmoEvaluation/*.txt")
                         if not p.name.startswith("."))
    if not label_files:
        raise FileNotFoundError(f"{root}: no IEMOCAP label files (Session*/dialog/EmoEvaluation/*.txt)")
    return [u for f in label_files for u in parse_label_file(f)]
