"""Deployment statistics: standardising audio of a corpus the model never saw, from the
deployment's own traffic, never from the batch a clip arrives in.

Why: a model trained with per-corpus standardisation (`train.normalize: corpus`) needs the
statistics of the recording condition it is used in. Taking them from the clips scored together
made a clip's label depend on its neighbours (25 angry clips in one call came out 9 / 7 / 5 / 4
over four classes; one at a time, all angry). Here every clip of unknown origin is standardised by
the statistics of the traffic *before* it, and only then added to them:

- below `min_clips` clips seen, the pooled training statistics (what the model knows);
- from then on the running per-dimension mean and variance of every clip seen (Welford / Chan
  merge, exact), with exponential forgetting once `window` clips have been seen: each new clip then
  weighs 1 / `window` and older traffic fades (memory of about `window` clips), so a deployment
  follows a slow change of microphone or room without being swayed by one request.

A batch is therefore scored exactly like its clips one at a time in the same order, and a clip's
statistics never contain the clip itself. The statistics are those of raw features, so they belong
to the feature configuration (`feature_key`), not to one model version: a new champion reading the
same features keeps them.

`DeploymentStats` is the one implementation: `affectflow predict`, the MLflow pyfunc and the KServe
predictor keep one per deployment (persisted as a small JSON file at a path or `s3://` URI, written
atomically; `affectflow deploy-stats show|reset`), and the generalization study's streamed
protocol (`stream_normalise`) runs a fresh one over a held-out corpus in shuffled order.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affectflow.models.data import EPS, NormStats, normalize
from affectflow.storage import atomic_write_text
from affectflow.storage.s3 import S3NotFoundError, S3Store, is_s3

STATE_FORMAT = 1


class DeploymentStatsError(ValueError):
    """A state file that cannot be used with this model; the message names the file and the field."""


@dataclass
class DeploymentStats:
    """Running per-dimension statistics of a deployment's unknown-corpus traffic."""

    prior: NormStats
    """The pooled training statistics, used until `min_clips` clips have been seen."""
    min_clips: int = 20
    window: int = 1000
    feature_key: str = ""
    clips: int = 0
    weight: float = 0.0
    """Frames (vectors: clips) behind `mean` / `m2`, after forgetting."""
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def active(self) -> bool:
        """Whether the traffic's own statistics are used (else the pooled training ones)."""
        return self.prior.mode != "utterance" and self.clips >= self.min_clips

    def current(self) -> NormStats:
        """The statistics the next clip is standardised with."""
        if not self.active or self.mean is None or self.m2 is None:
            return self.prior
        std = np.maximum(np.sqrt(np.maximum(self.m2 / self.weight, 0.0)), EPS)
        return NormStats(mode="global", mean=self.mean.tolist(), std=std.tolist())

    def update(self, array: np.ndarray) -> None:
        """Add one clip (a vector, or a (dim, frames) matrix: every frame counts)."""
        if self.prior.mode == "utterance":
            return
        self.merge(*clip_moments(array))

    def merge(self, mb: np.ndarray, m2b: np.ndarray, nb: float, clips: int = 1) -> None:
        """Add the moments of `clips` clip(s) (`clip_moments`; several merged: a prediction-log record
        of a windowed clip) — what `update` does, so the statistics can be rebuilt from the log."""
        if self.prior.mode == "utterance":
            return
        dim = len(mb)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2, self.weight = mb, m2b, float(nb)
        else:
            if len(self.mean) != dim:
                raise DeploymentStatsError(f"deployment statistics: a clip of {dim} dimensions, the state has "
                                           f"{len(self.mean)} (field 'mean')")
            if self.clips >= self.window:  # exponential forgetting: memory of about `window` clips
                keep = 1.0 - 1.0 / self.window
                self.weight *= keep
                self.m2 = self.m2 * keep
            total = self.weight + nb
            delta = mb - self.mean
            self.mean = self.mean + delta * (nb / total)
            self.m2 = self.m2 + m2b + np.square(delta) * (self.weight * nb / total)
            self.weight = total
        self.clips += clips

    def normalise(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each array standardised by the statistics of the clips before it, then added to them:
        a batch gives what its clips give one at a time in the same order."""
        out = []
        with self.lock:
            for a in arrays:
                out.append(_standardise(a, self))
                self.update(a)
        return out

    def reset(self) -> None:
        with self.lock:
            self.clips, self.weight, self.mean, self.m2 = 0, 0.0, None, None

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "feature_key": self.feature_key, "clips": self.clips,
                "min_clips": self.min_clips, "window": self.window, "weight": self.weight,
                "mean": None if self.mean is None else self.mean.tolist(),
                "m2": None if self.m2 is None else self.m2.tolist()}

    def load_json(self, data: Any, where: str) -> None:
        """Take the traffic part of a saved state (the prior and the rule stay the model's)."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise DeploymentStatsError(f"{where}: field 'format': not a deployment-statistics state "
                                       f"(format {STATE_FORMAT})")
        if self.feature_key and data.get("feature_key") not in ("", self.feature_key):
            raise DeploymentStatsError(
                f"{where}: field 'feature_key': {data.get('feature_key')!r} was gathered for other features "
                f"than this model reads ({self.feature_key!r}); point at another file or reset it "
                "(affectflow deploy-stats reset)")
        try:
            clips, weight = int(data["clips"]), float(data["weight"])
            mean = None if data["mean"] is None else np.asarray(data["mean"], np.float64)
            m2 = None if data["m2"] is None else np.asarray(data["m2"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise DeploymentStatsError(f"{where}: field {e}: missing or not a number") from None
        if (mean is None) != (m2 is None) or (mean is not None and (mean.shape != m2.shape or mean.ndim != 1)):
            raise DeploymentStatsError(f"{where}: fields 'mean' / 'm2': not two vectors of one length")
        if mean is not None and self.prior.mean and len(mean) != len(self.prior.mean):
            raise DeploymentStatsError(f"{where}: field 'mean': {len(mean)} dimensions, the model reads "
                                       f"{len(self.prior.mean)}")
        if clips < 0 or weight < 0 or not math.isfinite(weight) or (
                mean is not None and not (np.isfinite(mean).all() and np.isfinite(m2).all())):
            raise DeploymentStatsError(f"{where}: fields 'clips' / 'weight' / 'mean' / 'm2': negative or not finite")
        with self.lock:
            self.clips, self.weight, self.mean, self.m2 = clips, weight, mean, m2

    def summary(self) -> dict[str, Any]:
        """What `affectflow deploy-stats show` prints."""
        return {"feature_key": self.feature_key, "clips_seen": self.clips, "min_clips": self.min_clips,
                "window": self.window, "using": "traffic" if self.active else "pooled training statistics",
                "dimensions": 0 if self.mean is None else len(self.mean)}


def clip_moments(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, sum of squared deviations, frames) per dimension of one clip (a vector: one frame)."""
    dim = array.shape[0]
    m = np.asarray(array, np.float64).reshape(dim, -1)
    mb = m.mean(axis=1)
    return mb, np.square(m - mb[:, None]).sum(axis=1), float(m.shape[1])


def _standardise(a: np.ndarray, stats: DeploymentStats) -> np.ndarray:
    return normalize(a, stats.current())


def for_model(meta: Any) -> DeploymentStats:
    """A fresh state for a model folder's metadata (`ModelMeta`): its pooled statistics, its rule."""
    rule = meta.deploy_normalization
    prior = NormStats.from_dict(meta.normalization)
    min_clips = rule.min_clips if rule.mode == "running" else math.inf
    return DeploymentStats(prior=prior, min_clips=min_clips, window=rule.window,  # type: ignore[arg-type]
                           feature_key=meta.feature_key)


def stream_normalise(meta: Any, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The streamed protocol's normalisation: a fresh deployment fed `arrays` in their order."""
    return for_model(meta).normalise(arrays)


# ----------------------------------------------------------------------------- the state file
class StateFile:
    """Where a deployment keeps its statistics: a local JSON file or an `s3://` object."""

    def __init__(self, location: str | Path, store: S3Store | None = None):
        self.location = str(location)
        self.store = store

    def _s3(self) -> S3Store:
        if self.store is None:
            self.store = S3Store()
        return self.store

    def read(self) -> Any | None:
        """The saved JSON, or None when there is none yet."""
        try:
            raw = self._s3().read_bytes(self.location) if is_s3(self.location) else Path(self.location).read_bytes()
        except (FileNotFoundError, S3NotFoundError):
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise DeploymentStatsError(f"{self.location}: not JSON ({e}); reset it (affectflow deploy-stats "
                                       "reset)") from None

    def write(self, state: DeploymentStats) -> None:
        with state.lock:
            text = json.dumps(state.to_json())
        if is_s3(self.location):
            self._s3().write_bytes(self.location, text.encode())
        else:
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.location, text)

    def delete(self) -> bool:
        """Remove the state; True when there was one."""
        if is_s3(self.location):
            existed = self._s3().exists(self.location)
            if existed:
                self._s3().delete([self.location])
            return existed
        try:
            Path(self.location).unlink()
            return True
        except FileNotFoundError:
            return False


def _other_features(saved: Any, stats: DeploymentStats) -> bool:
    return isinstance(saved, dict) and saved.get("feature_key") not in ("", stats.feature_key)


class Deployment:
    """A deployment's statistics and where they are kept (None: in memory only, for this process)."""

    def __init__(self, meta: Any, location: str | Path | None = None, store: S3Store | None = None,
                 replace_other_features: bool = False):
        """`replace_other_features`: a saved state gathered for other features than this model
        reads is replaced by a fresh one (a server rolling out a champion with new features),
        instead of being an error."""
        self.stats = for_model(meta)
        self.file = StateFile(location, store) if location else None
        if self.file is not None:
            saved = self.file.read()
            if saved is not None and not (replace_other_features and _other_features(saved, self.stats)):
                self.stats.load_json(saved, self.file.location)

    def normalise(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.stats.normalise(arrays)

    def save(self) -> None:
        if self.file is not None:
            self.file.write(self.stats)
