"""How well can a fresh classifier still tell the domains apart? (proxy A-distance)

A domain probe (logistic regression or a small MLP, scikit-learn) is trained and tested on
embeddings of held-out speakers with speaker-grouped cross-validation, so it must recognise the
*corpus* of speakers it never saw rather than memorise voices. With ε its balanced error, the proxy
A-distance (Ben-David et al.) is 2 (1 − 2ε): 2 = perfectly separable domains, 0 = indistinguishable.
Each target corpus is probed against the pooled source corpora. The 2-D projection (PCA or t-SNE)
shows the same embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from affectflow.config import PretrainConfig


@dataclass
class ProbeResult:
    target: str
    accuracy: float
    """Balanced accuracy of the probe, out of fold."""
    a_distance: float
    n_source: int
    n_target: int
    folds: int
    grouped: bool
    """True: folds by speaker (no speaker in both the probe's training and test part)."""

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "accuracy": round(self.accuracy, 4), "a_distance": round(self.a_distance, 4),
                "n_source": self.n_source, "n_target": self.n_target, "folds": self.folds, "grouped": self.grouped}


def proxy_a_distance(error: float) -> float:
    """2 (1 − 2ε) for a domain classifier's (balanced) error ε."""
    return 2.0 * (1.0 - 2.0 * error)


def _estimator(cfg: PretrainConfig) -> Any:
    if cfg.probe == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=tuple(cfg.probe_hidden), max_iter=cfg.probe_max_iter,
                            early_stopping=False, random_state=cfg.seed)
    else:
        clf = LogisticRegression(max_iter=cfg.probe_max_iter, class_weight="balanced")
    return make_pipeline(StandardScaler(), clf)


def domain_probe(z: np.ndarray, is_target: np.ndarray, speakers: np.ndarray, cfg: PretrainConfig,
                 target: str) -> ProbeResult | None:
    """Out-of-fold balanced accuracy of source-vs-target classification on embeddings `z`.

    Folds group speakers when both sides have at least two; otherwise clips are split (noted as
    `grouped: False`). None when either side is empty.
    """
    y = is_target.astype(int)
    n_t, n_s = int(y.sum()), int(len(y) - y.sum())
    if n_t == 0 or n_s == 0:
        return None
    spk_t = len(set(speakers[y == 1]))
    spk_s = len(set(speakers[y == 0]))
    k = min(cfg.probe_folds, spk_t, spk_s)
    grouped = k >= 2
    if grouped:
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.seed).split(z, y, speakers)
    else:
        k = max(2, min(cfg.probe_folds, n_t, n_s))
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed).split(z, y)
    pred = np.zeros_like(y)
    base = _estimator(cfg)
    for tr, te in splits:
        if len(np.unique(y[tr])) < 2:  # a fold without one side cannot train a classifier
            pred[te] = int(np.bincount(y[tr]).argmax())
            continue
        model = clone(base).fit(z[tr], y[tr])
        pred[te] = model.predict(z[te])
    acc = float(balanced_accuracy_score(y, pred))
    return ProbeResult(target, acc, proxy_a_distance(1.0 - acc), n_s, n_t, k, grouped)


def probe_all(z: np.ndarray, corpora: np.ndarray, speakers: np.ndarray, targets: Sequence[str],
              sources: Sequence[str], cfg: PretrainConfig) -> list[ProbeResult]:
    """One probe per target corpus against the pooled sources."""
    out = []
    for t in targets:
        keep = np.isin(corpora, [*sources, t])
        r = domain_probe(z[keep], corpora[keep] == t, speakers[keep], cfg, t)
        if r is not None:
            out.append(r)
    return out


def project_2d(z: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(n, 2) coordinates of standardised embeddings: PCA, or t-SNE (perplexity capped by n)."""
    zs = StandardScaler().fit_transform(z)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(zs) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(zs)
    from sklearn.decomposition import PCA

    if zs.shape[1] < 2:
        return np.column_stack([zs[:, 0], np.zeros(len(zs))])
    return PCA(n_components=2, random_state=seed).fit_transform(zs)
