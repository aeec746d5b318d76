"""Drift statistics between a reference sample (the model's training clips) and a window of logged
traffic, as pure functions of arrays: what `affectflow monitor` judges with.

- `psi`: population stability index per dimension (bins: the reference's deciles). The industry's
  rule of thumb reads < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift; reported per summary
  dimension, not the verdict (16 correlated dimensions would multiply false alarms).
- `mmd_test`: the kernel two-sample test (Gretton et al. 2012, JMLR 13: "A kernel two-sample
  test"): squared MMD with an RBF kernel (median-distance bandwidth) and its permutation p-value.
  One test over all dimensions, its false-alarm rate bounded by the p-value threshold for
  exchangeable samples.
- `domain_auc`: a classifier told to separate reference from traffic (logistic regression,
  stratified cross-validation): its ROC AUC is an effect size (0.5: indistinguishable). Held-out
  speakers of the training corpora are never exchangeable with the training speakers, so with
  enough clips the MMD test alone would flag them; the AUC threshold keeps the verdict to shifts
  that matter (a new corpus separates at AUC well above 0.9 on eGeMAPS / log-mel summaries).
- `class_shares`, `total_variation`, `confidence`: the model's outputs (collapse, prior shift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PSI_EPS = 1e-4
"""Floor of a bin's share in PSI (an empty bin would be log(0))."""
MAX_MMD_CLIPS = 600
"""Clips per side in the MMD test (random subsample above this: the kernel is quadratic)."""


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> np.ndarray:
    """PSI per column of (n, d) `reference` vs (m, d) `current`, bins at the reference's quantiles."""
    out = np.zeros(reference.shape[1])
    for j in range(reference.shape[1]):
        edges = np.unique(np.quantile(reference[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
        r = np.bincount(np.searchsorted(edges, reference[:, j], side="right"), minlength=len(edges) + 1)
        c = np.bincount(np.searchsorted(edges, current[:, j], side="right"), minlength=len(edges) + 1)
        pr = np.maximum(r / r.sum(), PSI_EPS)
        pc = np.maximum(c / c.sum(), PSI_EPS)
        out[j] = float(np.sum((pc - pr) * np.log(pc / pr)))
    return out


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.sum(x * x, axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


@dataclass(frozen=True)
class MmdResult:
    mmd2: float
    """Squared MMD of the two samples (the biased V-statistic, whose permutation test is exact)."""
    p_value: float
    """Share of label permutations with an MMD at least as large (the observed one counted)."""
    bandwidth: float


def mmd_test(reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0) -> MmdResult:
    """The permutation test of MMD (RBF kernel, bandwidth: median pairwise distance); all
    permutations at once: MMD² of a labelling w (1/n on one side, -1/m on the other) is wᵀKw."""
    rng = np.random.default_rng(seed)
    ref = reference[rng.permutation(len(reference))[:MAX_MMD_CLIPS]]
    cur = current[rng.permutation(len(current))[:MAX_MMD_CLIPS]]
    joint = np.concatenate([ref, cur]).astype(np.float64)
    d2 = _sq_dists(joint)
    positive = d2[np.triu_indices(len(joint), 1)]
    positive = positive[positive > 0]
    bandwidth = float(np.sqrt(np.median(positive))) if len(positive) else 1.0
    k = np.exp(-d2 / (2.0 * bandwidth ** 2))
    w = np.r_[np.full(len(ref), 1.0 / len(ref)), np.full(len(cur), -1.0 / len(cur))]
    ws = np.stack([w, *(rng.permutation(w) for _ in range(permutations))], axis=1)
    stats = np.einsum("ip,ip->p", ws, k @ ws)
    return MmdResult(float(stats[0]), float((stats >= stats[0]).sum() / (permutations + 1)), bandwidth)


def domain_auc(reference: np.ndarray, current: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated ROC AUC of a logistic regression telling `current` from `reference`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([reference, current]).astype(np.float64)
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    folds = max(2, min(folds, len(reference), len(current)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
    scores = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def class_shares(probabilities: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each class among the argmax predictions."""
    if not len(probabilities):
        return np.zeros(n_classes)
    return np.bincount(np.argmax(probabilities, axis=1), minlength=n_classes) / len(probabilities)


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    """Half the L1 distance of two distributions over the same classes."""
    return float(0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def confidence(probabilities: np.ndarray, bins: int = 10) -> dict[str, object]:
    """Top-class probability: mean, median and histogram over [1/C, 1]."""
    top = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    floor = 1.0 / probabilities.shape[1] if probabilities.ndim == 2 and probabilities.shape[1] else 0.0
    hist, edges = np.histogram(top, bins=bins, range=(floor, 1.0))
    return {"mean": float(top.mean()) if len(top) else None, "median": float(np.median(top)) if len(top) else None,
            "histogram": hist.tolist(), "edges": [round(float(e), 4) for e in edges]}
