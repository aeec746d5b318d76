"""The common manifest: one row per clip, whatever corpus it came from.

Columns (parquet, see `COLUMNS`):
  utt_id       unique id `corpus/relative-stem` (`corpus/relative-stem.ext` for files that differ only in suffix)
  path         audio location (absolute local path or s3:// URI)
  corpus       corpus name from params (also the DANN domain)
  role         source | target | heldout
  speaker      corpus-qualified speaker id `corpus/raw-id`: speakers never collide across corpora
  gender       female | male | "" (unknown)
  label        the corpus's own label in the canonical vocabulary (`CANONICAL_LABELS`)
  emotion      the configured class it maps to
  valence, arousal   optional dimensional labels (NaN when absent), on the corpus's own scale
  dominance    optional, like valence / arousal (`OPTIONAL_COLUMNS`: manifests written before it read as NaN)
  intensity    the corpus's own intensity mark, "normal" | "strong" | "" (RAVDESS; weak arousal labels)
  duration     seconds; sample_rate and channels of the original file
  sha256       content hash of the file bytes (duplicate detection, feature-cache key)
  fold         speaker-group fold index; split: train | val | test
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from affectflow.storage import atomic_path

CANONICAL_LABELS = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised",
    "boredom", "frustrated", "excited", "contempt", "other",
)

COLUMNS = [
    "utt_id", "path", "corpus", "role", "speaker", "gender", "label", "emotion",
    "valence", "arousal", "duration", "sample_rate", "channels", "sha256", "fold", "split",
]
OPTIONAL_COLUMNS: dict[str, object] = {"dominance": float("nan"), "intensity": ""}
"""Columns added after manifests were cached: written by ingest, filled with these values when a
manifest lacks them (`read_manifest`)."""
INTENSITIES = ("normal", "strong")


@dataclass
class Utterance:
    """What a corpus adapter knows about one clip before the audio is probed."""

    path: str
    speaker: str
    label: str
    gender: str = ""
    valence: float | None = None
    arousal: float | None = None
    dominance: float | None = None
    intensity: str = ""
    """"normal" | "strong" | "" (unknown): how strongly the emotion was acted (`INTENSITIES`)."""
    utt_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class ManifestError(ValueError):
    """A malformed manifest or manifest row; the message names the file, row and field."""


def map_label(raw: str, classes: Sequence[str], label_map: Mapping[str, str]) -> str | None:
    """Map a canonical label to a configured class; None means "drop and count"."""
    if raw in label_map:
        mapped = label_map[raw]
        return mapped if mapped in classes else None
    return raw if raw in classes else None


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks columns {missing}")
    with atomic_path(path) as tmp:
        df[COLUMNS + [c for c in df.columns if c not in COLUMNS]].to_parquet(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise ManifestError(f"{path}: cannot read manifest ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks columns {missing}")
    for name, default in OPTIONAL_COLUMNS.items():
        if name not in df.columns:
            df[name] = default
    return df


def manifest_hash(df: pd.DataFrame, columns: Sequence[str] = ("sha256", "speaker", "emotion", "split")) -> str:
    """Order-independent hash of what matters for comparing models on "the same test set"."""
    cols = [c for c in columns if c in df.columns]
    rows = sorted("|".join(str(v) for v in r) for r in df[cols].itertuples(index=False))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
