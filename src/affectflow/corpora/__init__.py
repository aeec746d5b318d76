"""Corpus adapters: one module per corpus, each exposing `prepare(root) -> list[Utterance]`.

A new corpus is one new module plus a line in `ADAPTERS`. Adapters only read names and metadata;
decoding, hashing and resampling happen once, in `affectflow.stages.ingest`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from affectflow.contracts.manifest import Utterance

ADAPTERS: dict[str, str] = {
    "ravdess": "affectflow.corpora.ravdess",
    "emodb": "affectflow.corpora.emodb",
    "crema_d": "affectflow.corpora.crema_d",
    "tess": "affectflow.corpora.tess",
    "savee": "affectflow.corpora.savee",
    "iemocap": "affectflow.corpora.iemocap",
    "emovo": "affectflow.corpora.emovo",
    "csv": "affectflow.corpora.csv_manifest",
}

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf", ".opus")


def audio_files(base: Path) -> list[Path]:
    """Every audio file below `base`, sorted; skips hidden files such as macOS `._x.wav` forks,
    which carry an audio suffix but hold no audio (common in copied corpus archives)."""
    return sorted(p for p in base.rglob("*")
                  if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def get_adapter(name: str) -> Callable[[str], list[Utterance]]:
    if name not in ADAPTERS:
        raise KeyError(f"unknown corpus adapter '{name}'; known: {sorted(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[name]).prepare
