"""The real side of augmentation: training-split samples, standardisation, and the embedding space.

Generators only ever see the training split (never val/test), so neither the synthetic set nor
its filter thresholds carry information about held-out speakers. Log-mel clips become fixed-size
segments (random crops) because the generators produce fixed-size samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from affectflow.config import Params
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.features.kinds import kind_spec

STD_FLOOR = 1e-6
"""Constant features keep a unit-free scale instead of dividing by zero."""


class AugmentDataError(ValueError):
    """The training data cannot feed a generator; the message names the file and the field."""


@dataclass
class RealSet:
    """Real training samples in the generator's format, with provenance per row."""

    X: np.ndarray
    """Raw (unstandardised) features: (n, d) vectors or (n, n_mels, frames) segments."""
    y: np.ndarray
    """Class index into `classes`."""
    classes: list[str]
    kind: str
    utt_ids: np.ndarray
    speakers: np.ndarray
    corpora: np.ndarray | None = None
    """Corpus of each row (style codes mix speakers across corpora); None when not known."""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])


def training_rows(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Labelled source-corpus rows of the training split whose emotion is a configured class."""
    rows = manifest[(manifest["split"] == "train") & manifest["emotion"].isin(classes)]
    if "role" in rows.columns:
        rows = rows[rows["role"] == "source"]
    return rows


def crop_segments(arr: np.ndarray, frames: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` random crops of `frames` frames from (n_mels, T); short clips are padded with their minimum
    (the log-mel silence level) so a segment is never invented from another clip."""
    t = arr.shape[1]
    if t < frames:
        fill = float(arr.min()) if arr.size else 0.0
        arr = np.pad(arr, ((0, 0), (0, frames - t)), constant_values=fill)
        return np.repeat(arr[None], n, axis=0)
    starts = rng.integers(0, t - frames + 1, size=n)
    return np.stack([arr[:, s : s + frames] for s in starts])


def load_real_set(
    params: Params, manifest: str | Path | pd.DataFrame, features_dir: str | Path,
) -> RealSet:
    """Training-split samples of `params.augment.feature` (log-mel: `segments_per_clip` crops per clip)."""
    cfg = params.augment
    classes = list(params.ingest.classes)
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    rows = training_rows(df, classes)
    if rows.empty:
        raise AugmentDataError(f"{manifest if not isinstance(manifest, pd.DataFrame) else 'manifest'}: "
                               f"no training-split rows with an emotion in ingest.classes")
    fs = FeatureSet(features_dir)
    ids = rows["utt_id"].tolist()
    y_clip = np.array(rows["emotion"].map({c: i for i, c in enumerate(classes)}), dtype=np.int64)
    spk = np.array(rows["speaker"], dtype=str)
    corp = np.array(rows["corpus"], dtype=str) if "corpus" in rows.columns else np.full(len(rows), "", dtype=str)
    kind = cfg.feature
    if not kind_spec(kind).frame_level:  # one vector per clip (eGeMAPS)
        X = fs.matrix(kind, ids)
        if X.ndim != 2:
            raise AugmentDataError(f"{features_dir}: {kind} features are not fixed-size vectors (shape {X.shape})")
        return RealSet(X, y_clip, classes, kind, np.asarray(ids), spk, corp)
    rng = np.random.default_rng(cfg.seed)  # frame-level (log-mel): `segments_per_clip` crops per clip
    k = cfg.segments_per_clip
    segs = [crop_segments(a, cfg.segment_frames, k, rng) for a in fs.load(kind, ids)]
    X = np.concatenate(segs).astype(np.float32)
    return RealSet(X, np.repeat(y_clip, k), classes, kind, np.repeat(np.asarray(ids), k), np.repeat(spk, k),
                   np.repeat(corp, k))


@dataclass
class Standardizer:
    """Per-feature (vectors) or per-mel-band (segments) z-scoring fitted on real training data."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        axes = (0,) if X.ndim == 2 else (0, 2)
        mean = X.mean(axis=axes, keepdims=True)[0]
        std = np.maximum(X.std(axis=axes, keepdims=True)[0], STD_FLOOR)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.std).astype(np.float32)

    def inverse(self, Z: np.ndarray) -> np.ndarray:
        return (Z * self.std + self.mean).astype(np.float32)


def pooled(X: np.ndarray) -> np.ndarray:
    """Fixed-length description of a sample: vectors as they are; segments as per-band mean and std
    over time (so the embedding ignores where in the segment an event happens)."""
    if X.ndim == 2:
        return X.astype(np.float64)
    return np.concatenate([X.mean(axis=2), X.std(axis=2)], axis=1).astype(np.float64)


class Embedding:
    """The fixed space where the filter and the report measure distances: pooled features,
    standardised, then PCA — all fitted on real training data only, so before/after numbers
    and different generators are comparable."""

    def __init__(self, n_components: int, seed: int = 0):
        self.n_components = n_components
        self.seed = seed
        self.scaler = StandardScaler()
        self.pca: PCA | None = None

    def fit(self, X_real: np.ndarray) -> Embedding:
        F = self.scaler.fit_transform(pooled(X_real))
        if self.n_components:
            k = min(self.n_components, F.shape[0], F.shape[1])
            self.pca = PCA(n_components=k, random_state=self.seed).fit(F)
        return self

    def features(self, X: np.ndarray) -> np.ndarray:
        """Standardised pooled features (the label-agreement classifier's input)."""
        return self.scaler.transform(pooled(X))

    def transform(self, X: np.ndarray) -> np.ndarray:
        F = self.features(X)
        return self.pca.transform(F) if self.pca is not None else F


def calibration_split(clip_ids: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows held out from generator training to calibrate the realness threshold.

    A critic scores the real samples it was trained on far above unseen real ones (it memorises a
    small training set), so "as real as real data" must be judged on real clips it never saw.
    Whole clips are held out (log-mel crops of one clip stay together), per class, at least one
    clip per class when the class has two or more; fraction 0 holds out nothing.
    """
    held = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return held
    rng = np.random.default_rng([seed, 17])
    for c in np.unique(y):
        clips = np.unique(clip_ids[y == c])
        if len(clips) < 2:
            continue
        n = min(len(clips) - 1, max(1, round(fraction * len(clips))))
        held |= np.isin(clip_ids, rng.choice(clips, size=n, replace=False)) & (y == c)
    return held
