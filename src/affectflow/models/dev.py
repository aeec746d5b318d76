"""Deep embedded validation (DEV): choosing an adaptation without target labels.

You, Wang, Long & Wang (2019), "Towards accurate model selection in deep unsupervised domain
adaptation", ICML (PMLR 97: 7124-7133). The target risk of a model is estimated on *labelled source
validation* clips, each weighted by how target-like it is: w(x) = (n_s / n_t) · d(x) / (1 - d(x)),
with d a domain classifier (target vs source) trained on the model's own embeddings of source
training and target clips. Importance weighting alone has a large variance; DEV subtracts a control
variate: with l_j = w_j · loss_j, η = -Cov(l, w) / Var(w) and

    R_DEV = mean(l) + η · mean(w) - η,

unbiased for the target risk when the weights are right (E[w] = 1 under the source). The candidate
(λ = 0: no adaptation, or a DANN strength) with the lowest R_DEV is chosen; a DANN is used only when
its risk beats no adaptation by `margin`, so the criterion can decline adaptation where it would hurt.

`confident` adds what the point estimate lacks: R_DEV of a few hundred validation clips from a few
speakers, weighted by ratios up to `WEIGHT_MAX`, moves by more between seeds than the candidates
differ (benchmarks/RESULTS.md, the loop study on the Whisper front-end). A DANN is kept only when it
beats no adaptation in at least `confidence` of paired bootstrap resamples of the validation
speakers (clips of one speaker are not independent, so whole speakers are resampled: the bootstrap
for grouped data, Davison & Hinkley 1997, "Bootstrap methods and their application"), each
candidate's terms (losses, weights) fixed: a one-sided test of
"adapting lowers the estimated target risk" at level 1 - confidence, so an adaptation that the
estimate cannot tell from no adaptation is declined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

WEIGHT_CLIP = 1e-3
"""d(x) clipped to [c, 1 - c] (no division by zero)."""
BOOTSTRAP_ROUNDS = 1000
"""Resamples of `confident`'s bootstrap."""
WEIGHT_MAX = 10.0
"""Weights are divided by their mean over the validation clips (E[w] = 1, as the estimator assumes;
a domain classifier that separates the domains almost perfectly otherwise gives weights whose mean
is far from 1, and R_DEV runs off by η · (mean(w) - 1)) and clipped at this value, so a few
target-like source clips cannot carry the whole estimate; DEV's control variate corrects part of the
bias the clipping brings."""


def importance_weights(source_train: np.ndarray, target: np.ndarray, source_val: np.ndarray,
                       seed: int = 0) -> np.ndarray:
    """w(x) for the source validation embeddings: an L2-regularised logistic-regression domain
    classifier fitted on source training (0) vs target (1) embeddings, its odds scaled by n_s / n_t,
    then normalised and clipped (`WEIGHT_MAX`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source_train, target]).astype(np.float64)
    y = np.r_[np.zeros(len(source_train)), np.ones(len(target))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed))
    clf.fit(x, y)
    d = np.clip(clf.predict_proba(source_val.astype(np.float64))[:, 1], WEIGHT_CLIP, 1 - WEIGHT_CLIP)
    w = (len(source_train) / len(target)) * d / (1 - d)
    return np.minimum(w / w.mean(), WEIGHT_MAX)


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """R_DEV of per-clip validation losses under importance weights (see the module docstring)."""
    losses, weights = np.asarray(losses, np.float64), np.asarray(weights, np.float64)
    weighted = weights * losses
    var = float(np.var(weights, ddof=1)) if len(weights) > 1 else 0.0
    eta = 0.0 if var <= 0 else -float(np.cov(weighted, weights, ddof=1)[0, 1]) / var
    return float(weighted.mean() + eta * weights.mean() - eta)


@dataclass(frozen=True)
class Choice:
    lambd: float
    """The chosen DANN strength (0.0: no adaptation)."""
    adapt: bool
    risks: dict[float, float]
    reason: str
    confidence: float | None = None
    """Share of bootstrap resamples in which the point choice's DANN beat no adaptation (`confident`)."""


def choose(risks: Mapping[float, float], margin: float = 0.0) -> Choice:
    """The candidate with the lowest DEV risk; λ > 0 only when it beats λ = 0 by more than `margin`."""
    if 0.0 not in risks:
        raise ValueError("DEV selection: the candidates must include lambda 0 (no adaptation)")
    best = min(risks, key=lambda k: (risks[k], k))
    if best == 0.0 or risks[best] >= risks[0.0] - margin:
        return Choice(0.0, False, dict(risks), f"no adaptation: no DANN strength lowers the DEV risk "
                                               f"{risks[0.0]:.4f} by more than {margin:g}")
    return Choice(best, True, dict(risks), f"adapt with lambda {best:g}: DEV risk {risks[best]:.4f} < "
                                           f"{risks[0.0]:.4f} (no adaptation) - {margin:g}")


def bootstrap_wins(terms: Mapping[float, tuple[np.ndarray, np.ndarray]], lambd: float, groups: np.ndarray,
                   rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> float:
    """Share of speaker-block bootstrap resamples of the validation clips (`groups`: each clip's
    speaker) in which candidate `lambd`'s R_DEV is below no adaptation's (λ = 0); each candidate's
    (losses, weights) as computed, resampled with the same clips (paired)."""
    groups = np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    (l0, w0), (l1, w1) = terms[0.0], terms[lambd]
    wins = 0
    for _ in range(rounds):
        pick = np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))])
        wins += dev_risk(l1[pick], w1[pick]) < dev_risk(l0[pick], w0[pick])
    return wins / rounds


def confident(terms: Mapping[float, tuple[np.ndarray, np.ndarray]], groups: np.ndarray, margin: float = 0.0,
              confidence: float = 0.0, seed: int = 0) -> Choice:
    """`choose` on the candidates' R_DEV (terms: λ -> (validation losses, importance weights)), then
    a DANN kept only when it wins in at least `confidence` of the bootstrap resamples
    (`bootstrap_wins`); confidence 0: the point estimate alone."""
    point = choose({lam: dev_risk(*t) for lam, t in terms.items()}, margin)
    if not point.adapt or confidence <= 0:
        return point
    share = bootstrap_wins(terms, point.lambd, groups, seed=seed)
    if share >= confidence:
        return replace(point, confidence=share, reason=f"{point.reason}; in {share:.0%} of speaker-bootstrap "
                                                       f"resamples (>= {confidence:.0%})")
    return Choice(0.0, False, point.risks, f"no adaptation: lambda {point.lambd:g} lowers the DEV risk in only "
                                           f"{share:.0%} of speaker-bootstrap resamples (< {confidence:.0%})", share)
