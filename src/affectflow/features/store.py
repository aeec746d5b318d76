"""Content-addressed feature store: one `.npy` per (clip content, feature configuration).

Layout of a features folder (DVC tracks it as one directory output):
  <dir>/<kind>/<config-hash>/<sha[:2]>/<sha256>.npy   float32 arrays
  <dir>/index.parquet   utt_id, kind, key (config hash), file (relative), shape
  <dir>/summary.json

Why per-clip .npy: a re-run only computes keys that are missing (cache = the folder itself), any
clip is one `np.load` away (random access, memory-mappable), and DVC deduplicates unchanged files.
Kinds and arrays: `logmel` (n_mels, frames); `egemaps` functionals (n_features,);
`egemaps_lld` (n_lld, frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from affectflow.storage import atomic_path

INDEX = "index.parquet"
INDEX_COLUMNS = ["utt_id", "kind", "key", "file", "shape"]


def feature_path(root: str | Path, kind: str, key: str, sha256: str) -> Path:
    return Path(root) / kind / key / sha256[:2] / f"{sha256}.npy"


def save_array(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(arr, dtype=np.float32))


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
