"""Per-sample quality scores of synthetic data and the filter that decides which samples are kept.

Three criteria (each score is stored per sample in synthetic.npz):
  realness   critic / discriminator score, compared with a quantile of the scores the same network
             gives real training samples of the same class (a conditional critic scores classes
             on different scales, so the threshold is per class);
  agreement  probability a classifier trained on real training data alone gives the conditioned
             label; a sample it puts in another class would be label noise;
  manifold   in the embedding space: inside the k-NN ball of some real sample of the same class
             (the precision criterion of Kynkäänniemi et al., 2019), and farther from its nearest
             real sample than δ (a near-copy adds nothing and leaks memorisation).
And, with `augment.style: speaker`, a fourth:
  style_novelty  the sample's style (read from its features, `style.StyleSpace`) is farther from every
             training speaker's code than the `style_novelty_quantile` of real clips' distance to
             their nearest *other* training speaker: it sounds like a speaker the training set lacks.
             Alone it rewards any off-manifold sample (garbage is "novel" too): use it together
             with realness, agreement and manifold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors
from sklearn.neural_network import MLPClassifier

from affectflow.config import AugmentConfig

CRITERIA = ("realness", "agreement", "manifold", "novelty", "style_novelty")


# ----------------------------------------------------------------------------- geometry
def knn_radii(R: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of R to its k-th nearest *other* row (k clipped to len(R) - 1).

    A lone sample gets radius 0: with one example there is no evidence of a class's spread.
    """
    n = len(R)
    k_eff = min(k, n - 1)
    if k_eff <= 0:
        return np.zeros(n)
    dist, _ = NearestNeighbors(n_neighbors=k_eff + 1).fit(R).kneighbors(R)
    return dist[:, k_eff]


def inside_balls(S: np.ndarray, R: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """True where a row of S lies within the radius of at least one row of R (‖s − r‖ ≤ radius_r)."""
    if len(S) == 0:
        return np.zeros(0, dtype=bool)
    if len(R) == 0:
        return np.zeros(len(S), dtype=bool)
    parts = pairwise_distances_chunked(S, R, reduce_func=lambda D, _start: (radii[None, :] >= D).any(axis=1))
    return np.concatenate(list(parts))


def nearest_distance(S: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Distance from each row of S to its nearest row of R."""
    if len(S) == 0:
        return np.zeros(0)
    dist, _ = NearestNeighbors(n_neighbors=1).fit(R).kneighbors(S)
    return dist[:, 0]


def real_nn_distances(R: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-neighbour distance of each real sample (the scale δ is a quantile of)."""
    if len(R) < 2:
        return np.zeros(len(R))
    dist, _ = NearestNeighbors(n_neighbors=2).fit(R).kneighbors(R)
    return dist[:, 1]


# ----------------------------------------------------------------------------- label agreement
class AgreementModel:
    """A small recognizer trained on real training features only: L2-regularised logistic
    regression (the default: fast, and its probabilities are better calibrated than an MLP's that
    has memorised a few hundred clips, which matters for a threshold τ), or an MLP."""

    def __init__(self, hidden: Sequence[int], alpha: float, max_iter: int, seed: int):
        if hidden:
            self.clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), alpha=alpha, max_iter=max_iter,
                                     random_state=seed)
        else:
            self.clf = LogisticRegression(C=1.0 / max(alpha, 1e-12), max_iter=max_iter)

    def fit(self, F: np.ndarray, y: np.ndarray) -> AgreementModel:
        self.clf.fit(F, y)
        return self

    def prob_of(self, F: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """P(label | x) for each row; 0 for a label the model never saw in training."""
        if len(F) == 0:
            return np.zeros(0)
        proba = self.clf.predict_proba(F)
        col = {int(c): i for i, c in enumerate(self.clf.classes_)}
        out = np.zeros(len(F))
        for j, lab in enumerate(labels):
            i = col.get(int(lab))
            out[j] = proba[j, i] if i is not None else 0.0
        return out


# ----------------------------------------------------------------------------- scores & filter
@dataclass
class Scores:
    """Per synthetic sample: the criteria's raw scores."""

    realness: np.ndarray
    agreement: np.ndarray
    nn_distance: np.ndarray
    knn_inside: np.ndarray
    style_novelty: np.ndarray | None = None
    """Distance of the sample's read style to the nearest training speaker (None: style off)."""


@dataclass
class Thresholds:
    realness_min: dict[int, float]
    """Per class: the `realness_quantile` of calibration reals' scores."""
    label_tau: float
    delta: float
    """Near-copy distance: the `min_distance_quantile` of real leave-one-out NN distances."""
    realness_pooled: float = -math.inf
    """Threshold for classes without their own (all calibration reals pooled)."""
    style_novelty_min: float | None = None
    """style_novelty: the `style_novelty_quantile` of real clips' distance to their nearest other
    training speaker (None: style off)."""

    def to_json(self, classes: Sequence[str]) -> dict:
        out = {"realness_min": {classes[c]: v for c, v in self.realness_min.items()},
               "realness_pooled": self.realness_pooled, "label_tau": self.label_tau, "delta": self.delta}
        if self.style_novelty_min is not None:
            out["style_novelty_min"] = self.style_novelty_min
        return out


def style_novelty_threshold(real_novelty: np.ndarray, quantile: float) -> float:
    """The style_novelty bar: a quantile of the real clips' own novelty against the other speakers
    (`StyleSpace.real_novelty`) — a kept sample must be farther from every training voice than a
    typical real clip is from the nearest voice other than its own."""
    return float(np.quantile(real_novelty, quantile)) if len(real_novelty) else math.inf


def thresholds_from_real(
    cal_realness: np.ndarray, cal_y: np.ndarray, real_emb: np.ndarray, cfg: AugmentConfig,
) -> Thresholds:
    """Realness: class median of the calibration reals' scores plus the `realness_quantile` of all
    calibration reals' deviations from their class median. A conditional critic scores classes at
    different levels (hence per-class medians), while a tail quantile of a dozen clips per class
    would be noise (hence pooled spread). Classes without calibration reals get the pooled quantile.
    δ: the `min_distance_quantile` of leave-one-out NN distances of all real training samples."""
    q = cfg.realness_quantile
    pooled = float(np.quantile(cal_realness, q)) if len(cal_realness) else -math.inf
    classes = np.unique(cal_y)
    medians = {int(c): float(np.median(cal_realness[cal_y == c])) for c in classes}
    dev = cal_realness - np.array([medians[int(c)] for c in cal_y]) if len(cal_y) else np.zeros(0)
    spread = float(np.quantile(dev, q)) if len(dev) else 0.0
    realness_min = {c: m + spread for c, m in medians.items()}
    delta = float(np.quantile(real_nn_distances(real_emb), cfg.min_distance_quantile))
    return Thresholds(realness_min, cfg.label_tau, delta, pooled)


def manifold_scores(
    syn_emb: np.ndarray, syn_y: np.ndarray, real_emb: np.ndarray, real_y: np.ndarray, k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(nn_distance to any real sample, inside the k-NN balls of real samples of the same class)."""
    nn = nearest_distance(syn_emb, real_emb)
    inside = np.zeros(len(syn_emb), dtype=bool)
    for c in np.unique(syn_y):
        s, r = syn_y == c, real_y == c
        if r.any():
            inside[s] = inside_balls(syn_emb[s], real_emb[r], knn_radii(real_emb[r], k))
    return nn, inside


def criteria_passed(scores: Scores, y: np.ndarray, th: Thresholds) -> dict[str, np.ndarray]:
    """Pass mask of each criterion (whether or not it is switched on); style_novelty only when the
    scores and thresholds have it (style on)."""
    rmin = np.array([th.realness_min.get(int(c), th.realness_pooled) for c in y])
    passed = {
        "realness": scores.realness >= rmin,
        "agreement": scores.agreement >= th.label_tau,
        "manifold": scores.knn_inside.astype(bool),
        "novelty": scores.nn_distance > th.delta,
    }
    if scores.style_novelty is not None and th.style_novelty_min is not None:
        passed["style_novelty"] = scores.style_novelty > th.style_novelty_min
    return passed


def select(
    scores: Scores, y: np.ndarray, th: Thresholds, filters: Sequence[str], keep_fraction: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Kept mask: passes every enabled criterion; then per class at most ⌊keep_fraction · generated⌋,
    the most real first. Returns (kept, per-criterion pass masks)."""
    unknown = set(filters) - set(CRITERIA)
    if unknown:
        raise ValueError(f"augment.filters: unknown criteria {sorted(unknown)} (known: {list(CRITERIA)})")
    passed = criteria_passed(scores, y, th)
    missing = [f for f in filters if f not in passed]
    if missing:
        raise ValueError(f"augment.filters: {missing} need style scores and a threshold (augment.style: speaker)")
    ok = np.ones(len(y), dtype=bool)
    for f in filters:
        ok &= passed[f]
    kept = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        cap = math.floor(keep_fraction * len(idx) + 1e-9)
        cand = idx[ok[idx]]
        best = cand[np.argsort(-scores.realness[cand], kind="stable")][:cap]
        kept[best] = True
    return kept, passed
