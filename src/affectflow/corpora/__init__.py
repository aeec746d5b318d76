"""Corpus adapters: one module per corpus, each exposing `prepare(root) -> list[Utterance]`.

A new corpus is one new module plus a line in `ADAPTERS`. Adapters only read names and metadata;
decoding, hashing and resampling happen once, in `affectflow.ingest`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from affectflow.manifest import Utterance

ADAPTERS: dict[str, str] = {
    "ravdess": "affectflow.corpora.ravdess",
    "emodb": "affectflow.corpora.emodb",
    "crema_d": "affectflow.corpora.crema_d",
    "tess": "affectflow.corpora.tess",
    "savee": "affectflow.corpora.savee",
    "iemocap": "affectflow.corpora.iemocap",
    "csv": "affectflow.corpora.csv_manifest",
}

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf", ".opus")


def get_adapter(name: str) -> Callable[[str], list[Utterance]]:
    if name not in ADAPTERS:
        raise KeyError(f"unknown corpus adapter '{name}'; known: {sorted(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[name]).prepare
