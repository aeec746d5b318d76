"""The synthetic set (`augment/synthetic.npz`): what the augment stage hands the recognizer.

Fields (numpy arrays, no pickled objects):
  X           float32 (n, d) or (n, n_mels, frames): samples in the feature space of `feature`
  y           int64 class indices into `classes`
  classes     str, the generator's class names
  feature     str, the feature kind X lives in (`egemaps`, `logmel`, ...)
  generator   str, which generator made them
  kept        bool per row: passed the quality filter
  <score>     one float/bool value per row for every filter score (realness, agreement,
              nn_distance, knn_inside, style_novelty, and any score a newer filter adds)
  style       optional float32 (n, style_dim): the style code each row was generated with
              (augment.style: speaker); sets written without it read back with style None

`write_synthetic` and `read_synthetic` are the only writer and reader: training, the studies and
the tests all read through `read_synthetic`, which checks every field and names the missing one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from affectflow.storage import atomic_path

SYNTHETIC_FILE = "synthetic.npz"
REQUIRED_FIELDS = ("X", "y", "classes", "feature", "kept")
HEADER_FIELDS = ("classes", "feature", "generator")
"""Fields that describe the set, not one row each."""
OPTIONAL_ROW_FIELDS = ("style",)
"""Per-row fields that are not filter scores (absent from older sets)."""


class SyntheticFormatError(ValueError):
    """synthetic.npz is missing a field or has inconsistent lengths; the message names both."""


@dataclass
class SyntheticSet:
    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    feature: str
    kept: np.ndarray
    generator: str = ""
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-row filter scores by name."""
    style: np.ndarray | None = None
    """(n, style_dim) style code per row, or None (not style-conditioned, or an older file)."""

    def __len__(self) -> int:
        return len(self.X)

    def rows(self, mask: np.ndarray) -> SyntheticSet:
        """The same set restricted to `mask` (bool per row) or an index array."""
        return replace(self, X=self.X[mask], y=self.y[mask], kept=self.kept[mask],
                       scores={k: v[mask] for k, v in self.scores.items()},
                       style=None if self.style is None else self.style[mask])

    def kept_only(self) -> SyntheticSet:
        return self.rows(self.kept.astype(bool))


def synthetic_file(path: str | Path) -> Path:
    """The .npz for a file path or an augment folder holding one."""
    p = Path(path)
    return p / SYNTHETIC_FILE if p.is_dir() or not p.suffix else p


def write_synthetic(path: str | Path, s: SyntheticSet) -> Path:
    """Write atomically (a reader never sees half a set)."""
    n = len(s.X)
    optional = {} if s.style is None else {"style": s.style.astype(np.float32)}
    for name, v in (("y", s.y), ("kept", s.kept), *s.scores.items(), *optional.items()):
        if len(v) != n:
            raise SyntheticFormatError(f"{path}: field '{name}' has {len(v)} rows, X has {n}")
    clash = set(s.scores) & {*REQUIRED_FIELDS, *HEADER_FIELDS, *OPTIONAL_ROW_FIELDS}
    if clash:
        raise SyntheticFormatError(f"{path}: score names {sorted(clash)} are reserved fields")
    target = synthetic_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    scores = {k: (v.astype(bool) if v.dtype == bool else v.astype(np.float32)) for k, v in s.scores.items()}
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, X=s.X.astype(np.float32), y=s.y.astype(np.int64),
                 classes=np.asarray(s.classes, dtype=str), feature=np.asarray(s.feature),
                 generator=np.asarray(s.generator), kept=s.kept.astype(bool), **scores, **optional)
    return target


def read_synthetic(path: str | Path, kept_only: bool = True) -> SyntheticSet:
    """Read synthetic.npz (or an augment folder holding one), checking every required field."""
    p = synthetic_file(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no synthetic set (run `affectflow augment` first)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise SyntheticFormatError(f"{p}: not a readable .npz ({e})") from None
    missing = [k for k in REQUIRED_FIELDS if k not in arrays]
    if missing:
        raise SyntheticFormatError(f"{p}: missing field(s) {missing}")
    n = len(arrays["X"])
    row_fields = [k for k in arrays if k not in HEADER_FIELDS and k != "X"]
    for k in row_fields:
        if arrays[k].shape[:1] != (n,):
            raise SyntheticFormatError(f"{p}: field '{k}' has {len(arrays[k])} rows, X has {n}")
    s = SyntheticSet(
        X=arrays["X"], y=arrays["y"].astype(np.int64), classes=[str(c) for c in arrays["classes"]],
        feature=str(arrays["feature"]), kept=arrays["kept"].astype(bool),
        generator=str(arrays["generator"]) if "generator" in arrays else "",
        scores={k: arrays[k] for k in row_fields if k not in ("y", "kept", *OPTIONAL_ROW_FIELDS)},
        style=arrays.get("style"))
    return s.kept_only() if kept_only else s
