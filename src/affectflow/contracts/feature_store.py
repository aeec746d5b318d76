"""Content-addressed feature store: one `.npy` per (clip content, feature configuration).

Layout of a features folder (DVC tracks it as one directory output):
  <dir>/<kind>/<config-hash>/<sha[:2]>/<sha256>.npy   float32 arrays
  <dir>/index.parquet   utt_id, kind, key (config hash), file (relative), shape (list of ints)
  <dir>/summary.json

The config hash (`feature_key`) covers everything that changes the values: the kind's section of
`params.features`, `audio.sample_rate` and an algorithm/library version; the sha256 is the clip's
file content from the manifest. So a re-run only computes keys that are missing (the cache is the
folder itself), two configurations live side by side, and duplicate clips share one file.

Why one `.npy` per clip rather than one big HDF5/zarr/parquet table: arrays are variable-length
(frames), the store must be safe to extend from several processes at once (each file appears by an
atomic rename, so readers never see half an array and there is no shared file to lock), any clip is
one `np.load` away (random access, memory-mappable, no extra dependency), and DVC/S3 deduplicate and
sync unchanged files individually. The cost is many small files (~100 KB each for log-mel); for
corpora of a few 100k clips that is still fine on local disks and object stores.
Kinds and arrays: `logmel` (n_mels, frames); `egemaps` functionals (n_features,);
`egemaps_lld` (n_lld, frames).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.storage import atomic_path

INDEX = "index.parquet"
INDEX_COLUMNS = ["utt_id", "kind", "key", "file", "shape"]
SUMMARY = "summary.json"

_made_dirs: set[str] = set()


def feature_key(kind: str, config: dict[str, Any]) -> str:
    """16-hex hash of a kind and everything that determines its values (stable across runs)."""
    payload = json.dumps({"kind": kind, **config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def relative_file(kind: str, key: str, sha256: str) -> str:
    """Path of a feature file inside the store, as the index records it."""
    return f"{kind}/{key}/{sha256[:2]}/{sha256}.npy"


def feature_path(root: str | Path, kind: str, key: str, sha256: str) -> Path:
    return Path(root) / relative_file(kind, key, sha256)


def save_array(path: str | Path, arr: np.ndarray) -> None:
    """Write a float32 .npy atomically (temporary sibling + rename).

    Lighter than `storage.atomic_path` (no mkstemp, one open, parent folders created once per
    process) because the features stage writes thousands of small files; the guarantee is the same:
    the final name only ever holds a complete array. The temporary name is unique per process and
    thread, so several writers can fill the same store.
    """
    parent, name = os.path.split(os.fspath(path))  # plain strings: pathlib is slow at 1000s of files
    if parent not in _made_dirs:
        os.makedirs(parent, exist_ok=True)
        _made_dirs.add(parent)
    tmp = f"{parent}/.{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def array_shape(path: str | Path) -> tuple[int, ...]:
    """Shape from a .npy header without reading the data."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape = fmt.read_array_header_1_0(f)[0]
        elif version == (2, 0):
            shape = fmt.read_array_header_2_0(f)[0]
        else:
            shape = np.load(path, mmap_mode="r").shape
    return tuple(int(d) for d in shape)


def write_index(root: str | Path, rows: pd.DataFrame) -> Path:
    """Atomically write `index.parquet` (columns `INDEX_COLUMNS`)."""
    missing = [c for c in INDEX_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{root}/{INDEX}: index rows lack columns {missing}")
    path = Path(root) / INDEX
    with atomic_path(path) as tmp:
        rows[INDEX_COLUMNS].to_parquet(tmp, index=False)
    return path


class FeatureSet:
    """Read side of a features folder: what training, augmentation and evaluation use."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.index = pd.read_parquet(self.root / INDEX)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root}: no {INDEX}; run `affectflow features` first") from None
        self._by_kind = {k: g.set_index("utt_id")["file"] for k, g in self.index.groupby("kind")}

    @property
    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def has(self, kind: str) -> bool:
        return kind in self._by_kind

    def _files(self, kind: str, utt_ids: Sequence[str]) -> list[str]:
        if kind not in self._by_kind:
            raise KeyError(f"{self.root}: no '{kind}' features (have {self.kinds})")
        files = self._by_kind[kind]
        missing = [u for u in utt_ids if u not in files.index]
        if missing:
            raise KeyError(f"{self.root}: no '{kind}' features for {len(missing)} clips, e.g. {missing[0]}")
        return files.loc[list(utt_ids)].tolist()

    def load(self, kind: str, utt_ids: Sequence[str], mmap: bool = False) -> list[np.ndarray]:
        """Arrays in the order of `utt_ids` (variable length for frame-level kinds)."""
        mode = "r" if mmap else None
        return [np.load(self.root / f, mmap_mode=mode) for f in self._files(kind, utt_ids)]

    def matrix(self, kind: str, utt_ids: Sequence[str]) -> np.ndarray:
        """Stack fixed-size features (e.g. egemaps functionals) into (n, d)."""
        arrs = self.load(kind, utt_ids)
        return np.stack(arrs).astype(np.float32) if arrs else np.zeros((0, 0), np.float32)
