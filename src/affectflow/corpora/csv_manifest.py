"""Any corpus described by a CSV file: one row per clip, so a new corpus needs no code.

Required columns: `path`, `speaker`, `emotion`; optional: `gender`, `corpus`, `valence`, `arousal`,
`dominance` (numbers on any scale: training rescales them per corpus, `corpora.dimensions`) (column names are case-insensitive; other columns are ignored). Relative paths resolve against the
CSV's own folder, so a corpus folder with its CSV can be moved as a whole. Emotions are lower-cased
and common synonyms (anger, happiness, sadness, ...) map to the canonical vocabulary. A `corpus`
column qualifies the speaker (`crema/1001`), so one CSV may pool corpora whose speaker ids collide.
Every malformed row is a `ManifestError` naming the CSV file, the row and the field.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from affectflow.contracts.manifest import CANONICAL_LABELS, ManifestError, Utterance

REQUIRED = ("path", "speaker", "emotion")
OPTIONAL = ("gender", "corpus", "valence", "arousal", "dominance")
SYNONYMS = {
    "anger": "angry", "happiness": "happy", "sadness": "sad", "fear": "fearful",
    "surprise": "surprised", "disgusted": "disgust", "bored": "boredom",
    "frustration": "frustrated", "excitement": "excited", "neutrality": "neutral",
}
GENDERS = {"female": "female", "f": "female", "male": "male", "m": "male", "": "", "unknown": ""}


def normalise_emotion(raw: str) -> str | None:
    """Canonical label for a raw emotion string, or None when it is not one we know."""
    key = raw.strip().lower()
    label = SYNONYMS.get(key, key)
    return label if label in CANONICAL_LABELS else None


SUPPORTED_SCHEMES = ("s3://",)
"""URI schemes a clip's path may have (besides a local path): the storage layer reads these."""


def unsupported_scheme(value: str) -> str | None:
    """Why a path cell cannot be read (an `http://` or `file://` URI), else None: said as such, not
    as "file not found"."""
    if "://" not in value or value.startswith(SUPPORTED_SCHEMES):
        return None
    scheme = value.split("://", 1)[0]
    hint = f"; write the local path ({value[len('file://'):]})" if scheme == "file" else ""
    return f"URI scheme '{scheme}://' is not supported (local paths and {', '.join(SUPPORTED_SCHEMES)} only){hint}"


def _resolve(value: str, folder: Path) -> tuple[str, str]:
    """(absolute path or URI, utterance id) for a path cell."""
    if "://" in value:
        return value, value.split("://", 1)[1].rsplit(".", 1)[0]
    p = Path(value)
    full = Path(os.path.normpath(p if p.is_absolute() else folder / p))
    try:
        utt = full.relative_to(folder).with_suffix("").as_posix()
    except ValueError:
        utt = full.stem
    return str(full), utt


def _number(value: str | None, where: str, name: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        x = float(value)
    except ValueError:
        raise ManifestError(f"{where}, field '{name}': '{value}' is not a number") from None
    return None if math.isnan(x) else x


def _not_utf8(value: str) -> str | None:
    """What is wrong with a cell read with `surrogateescape` (bytes that are not UTF-8), else None."""
    for k, ch in enumerate(value):
        if "\udc80" <= ch <= "\udcff":
            return f"not UTF-8 text (byte 0x{ord(ch) - 0xDC00:02x} at character {k + 1}); save the CSV as UTF-8"
    return None


def prepare(root: str) -> list[Utterance]:
    """Read the CSV at `root` (a file, not a folder)."""
    csv_path = Path(root)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{root}: CSV manifest not found")
    folder = csv_path.parent.absolute()
    out: list[Utterance] = []
    # Bytes that are not UTF-8 are kept as surrogates and reported per cell (row, line and field)
    # rather than as a decoder error somewhere in the file.
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        for i, name in enumerate(header):
            if bad := _not_utf8(name):
                raise ManifestError(f"{csv_path}: header (line {reader.line_num}), column {i + 1}: {bad}")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{csv_path}: header lacks required columns {missing} (has {header})")
        col = {name: header.index(name) for name in (*REQUIRED, *OPTIONAL) if name in header}
        for rowno, row in enumerate(reader, start=1):
            if not any(cell.strip() for cell in row):
                continue  # blank line
            where = f"{csv_path}: row {rowno} (line {reader.line_num})"
            if len(row) != len(header):
                raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
            cell = {name: row[i].strip() for name, i in col.items()}
            for name, value in cell.items():
                if bad := _not_utf8(value):
                    raise ManifestError(f"{where}, field '{name}': {bad}")
            for name in REQUIRED:
                if not cell[name]:
                    raise ManifestError(f"{where}, field '{name}': empty")
            if bad := unsupported_scheme(cell["path"]):
                raise ManifestError(f"{where}, field 'path': {bad}")
            label = normalise_emotion(cell["emotion"])
            if label is None:
                raise ManifestError(f"{where}, field 'emotion': unknown emotion '{cell['emotion']}'")
            gender = GENDERS.get(cell.get("gender", "").lower())
            if gender is None:
                raise ManifestError(f"{where}, field 'gender': '{cell['gender']}' is not female/male/empty")
            path, utt_id = _resolve(cell["path"], folder)
            corpus = cell.get("corpus", "")
            out.append(Utterance(
                path=path,
                speaker=f"{corpus}/{cell['speaker']}" if corpus else cell["speaker"],
                label=label, gender=gender,
                valence=_number(cell.get("valence"), where, "valence"),
                arousal=_number(cell.get("arousal"), where, "arousal"),
                dominance=_number(cell.get("dominance"), where, "dominance"),
                utt_id=utt_id,
                extra={"corpus": corpus} if corpus else {},
            ))
    return out
