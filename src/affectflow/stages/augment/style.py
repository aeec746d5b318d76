"""Per-speaker style codes in the standardised feature space, new codes between speakers, and how
novel a sample's style is.

An emotion-conditioned generator trained on the training speakers can only interpolate *their*
distribution; speaker-independent and cross-corpus tests need voices and recording conditions the
training set lacks. A style code per speaker lets the generator be conditioned on "who / where",
and codes mixed between two training speakers (of different corpora when there are several) ask it
for a voice in between: a speaker that is not in the training set, with the emotion label kept.

Codes: per-speaker mean of the (class-centred) standardised features -> PCA fitted on the training
speakers' means -> one global scale so a typical component is ~1 (distances keep PCA's geometry).
Reading the style of any sample — real or generated — is a ridge regression from features to code
fitted on the real clips; a sample's style novelty is the distance of that reading to the nearest
training speaker's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold

RIDGE_ALPHA = 1.0
"""L2 strength of the features -> style-code regression on standardised features: enough to keep
~88 correlated eGeMAPS functionals from over-fitting a few hundred clips, small enough not to pull
every reading towards the mean code (which would make every sample look novel-less)."""
MAX_REFERENCE_FOLDS = 5
"""Speaker-grouped folds for the real clips' out-of-fold style readings (the novelty reference)."""


class StyleError(ValueError):
    """The training data cannot define style codes (e.g. a single speaker); the message says why."""


@dataclass
class StyleSpace:
    """Style codes of the training speakers and the regression that reads a sample's style."""

    speakers: list[str]
    """Training speakers, in the row order of `codes`."""
    corpora: list[str]
    """Corpus of each training speaker."""
    codes: np.ndarray
    """(n_speakers, style_dim) float32: normalised PCA coordinates of the speakers' mean features."""
    code_std: np.ndarray
    """Per-component std of `codes` over speakers (the unit of `noise`; 0 for padded components)."""
    encoder: Ridge
    mix_range: tuple[float, float] = (0.2, 0.8)
    noise: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    # ------------------------------------------------------------------------- fit
    @classmethod
    def fit(
        cls, X_std: np.ndarray, speakers: Sequence[str] | np.ndarray, corpora: Sequence[str] | np.ndarray,
        dim: int, y: np.ndarray | None = None, mix_range: Sequence[float] = (0.2, 0.8), noise: float = 0.0,
    ) -> StyleSpace:
        """Codes from X_std (n, d) rows of the training speakers; `y` (class per row), when given,
        removes class means first, so a speaker who recorded more angry clips does not get an
        "angry" style code."""
        X = np.asarray(X_std, dtype=np.float64)
        if X.ndim != 2:
            raise StyleError(f"style codes need vector features (n, d), got shape {X.shape}")
        spk = np.asarray(speakers, dtype=str)
        corp = np.asarray(corpora, dtype=str)
        names, inverse = np.unique(spk, return_inverse=True)
        if len(names) < 2:
            raise StyleError(f"style codes need at least 2 training speakers, got {len(names)}")
        F = X.copy()
        if y is not None:
            for c in np.unique(y):
                F[y == c] -= F[y == c].mean(axis=0)
        means = np.stack([F[inverse == i].mean(axis=0) for i in range(len(names))])
        centred = means - means.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        k = min(dim, len(names) - 1, X.shape[1])
        raw = centred @ vt[:k].T
        scale = float(np.sqrt((raw**2).sum(axis=1).mean() / max(k, 1)))
        codes = np.zeros((len(names), dim))
        codes[:, :k] = raw / (scale if scale > 0 else 1.0)
        spk_corpus = [str(corp[inverse == i][0]) for i in range(len(names))]
        encoder = Ridge(alpha=RIDGE_ALPHA).fit(X, codes[inverse])
        lo, hi = (float(v) for v in mix_range)
        return cls([str(n) for n in names], spk_corpus, codes.astype(np.float32),
                   codes.std(axis=0).astype(np.float32), encoder, (lo, hi), float(noise))

    # ------------------------------------------------------------------------- codes
    def codes_for(self, speakers: Sequence[str] | np.ndarray) -> np.ndarray:
        """The code of each named training speaker (a real clip's code is its speaker's)."""
        index = {s: i for i, s in enumerate(self.speakers)}
        try:
            rows = [index[str(s)] for s in speakers]
        except KeyError as e:
            raise StyleError(f"speaker {e.args[0]!r} has no style code (not a training speaker)") from None
        return self.codes[np.asarray(rows, dtype=np.int64)] if rows else np.zeros((0, self.dim), np.float32)

    def mix(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` new codes (1 − w)·a + w·b + noise: a, b two different training speakers — b from
        another corpus than a when the training set has 2+ corpora, so mixes cross recording
        conditions — w ~ U(mix_range), noise ~ N(0, (noise · code_std)²) per component."""
        n_spk = len(self.speakers)
        corp = np.asarray(self.corpora)
        a = rng.integers(0, n_spk, size=n)
        b = np.empty(n, dtype=np.int64)
        cross = len(set(self.corpora)) >= 2
        for i, ai in enumerate(a):
            pool = np.flatnonzero(corp != corp[ai]) if cross else np.delete(np.arange(n_spk), ai)
            b[i] = rng.choice(pool)
        w = rng.uniform(self.mix_range[0], self.mix_range[1], size=(n, 1))
        codes = (1.0 - w) * self.codes[a] + w * self.codes[b]
        if self.noise > 0:
            codes = codes + rng.normal(size=codes.shape) * self.noise * self.code_std
        return codes.astype(np.float32)

    # ------------------------------------------------------------------------- reading style
    def encode(self, X_std: np.ndarray) -> np.ndarray:
        """The style code a sample's features read as (ridge regression fitted on real clips)."""
        if len(X_std) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.encoder.predict(np.asarray(X_std, dtype=np.float64)).astype(np.float32)

    def code_novelty(self, C: np.ndarray, exclude: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """Distance of each code to the nearest training speaker's code (with `exclude`, one speaker
        name per row: to the nearest speaker other than that one)."""
        C = np.asarray(C, dtype=np.float64)
        if len(C) == 0:
            return np.zeros(0)
        D = np.linalg.norm(C[:, None, :] - self.codes[None, :, :].astype(np.float64), axis=2)
        if exclude is not None:
            own = np.asarray(exclude, dtype=str)[:, None] == np.asarray(self.speakers)[None, :]
            D[own] = np.inf
        return D.min(axis=1)

    def novelty(self, X_std: np.ndarray) -> np.ndarray:
        """Style novelty of samples: distance of their read style to the nearest training speaker."""
        return self.code_novelty(self.encode(X_std))

    def real_novelty(self, X_std: np.ndarray, speakers: Sequence[str] | np.ndarray) -> np.ndarray:
        """The reference for the style_novelty filter: each real clip's style read by a regression
        that never saw its speaker (speaker-grouped out-of-fold), distance to the nearest *other*
        training speaker. That is how far a real voice new to the encoder lies from the training
        voices; an in-sample reading would be pulled towards its own speaker's code."""
        X = np.asarray(X_std, dtype=np.float64)
        spk = np.asarray(speakers, dtype=str)
        target = self.codes_for(spk).astype(np.float64)
        folds = min(MAX_REFERENCE_FOLDS, len(np.unique(spk)))
        if folds < 2:  # one speaker: nothing to hold out
            return self.code_novelty(self.encode(X), exclude=spk)
        read = np.zeros_like(target)
        for tr, te in GroupKFold(n_splits=folds).split(X, groups=spk):
            read[te] = Ridge(alpha=RIDGE_ALPHA).fit(X[tr], target[tr]).predict(X[te])
        return self.code_novelty(read, exclude=spk)
