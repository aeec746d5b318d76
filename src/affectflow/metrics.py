"""Classification metrics for emotion recognition, with bootstrap confidence intervals.

UAR (unweighted average recall = macro recall) is the primary metric because emotion corpora are
imbalanced (RAVDESS has half as many `neutral` clips): a model that ignores a class loses 1/C of
UAR however rare the class is. WA (weighted accuracy = plain accuracy) and macro-F1 are reported
beside it. Every metric is computed from one confusion matrix, so a bootstrap resample costs one
`np.bincount`; averages run over the classes present in the reference labels (a class with no
reference example has no recall to average).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MetricFn = Callable[[np.ndarray], float]


def confusion(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = reference class, columns = predicted class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def recalls(cm: np.ndarray) -> np.ndarray:
    """Per-class recall; NaN for classes with no reference example."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def uar_cm(cm: np.ndarray) -> float:
    """Unweighted average recall over the classes present in the reference."""
    r = recalls(cm)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def wa_cm(cm: np.ndarray) -> float:
    """Weighted accuracy (overall accuracy)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def f1s(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2TP / (2TP + FP + FN); 0 where a class is never predicted nor present."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1_cm(cm: np.ndarray) -> float:
    """Macro-F1 over the classes present in the reference (same class set as UAR)."""
    present = cm.sum(axis=1) > 0
    return float(f1s(cm)[present].mean()) if present.any() else float("nan")


METRICS: dict[str, MetricFn] = {"uar": uar_cm, "wa": wa_cm, "macro_f1": macro_f1_cm}


def uar(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    return uar_cm(confusion(y_true, y_pred, n_classes))


def wa(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    return wa_cm(confusion(y_true, y_pred, n_classes))


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    return macro_f1_cm(confusion(y_true, y_pred, n_classes))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self, name: str) -> dict[str, float]:
        return {name: self.value, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


def bootstrap(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    n_classes: int,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    metrics: dict[str, MetricFn] | None = None,
) -> dict[str, Estimate]:
    """Point value and percentile bootstrap CI (resampling utterances) for each metric.

    `n_resamples=0` skips the bootstrap (the interval collapses to the point value).
    """
    metrics = metrics or METRICS
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    cm = confusion(t, p, n_classes)
    out: dict[str, Estimate] = {}
    for name, fn in metrics.items():
        value = fn(cm)
        if n_resamples <= 0 or t.size < 2:
            out[name] = Estimate(value, value, value)
            continue
        res = stats.bootstrap(
            (t, p), lambda a, b, fn=fn: fn(confusion(a, b, n_classes)), paired=True, vectorized=False,
            n_resamples=n_resamples, confidence_level=level, method="percentile",
            rng=np.random.default_rng(seed),
        )
        lo, hi = res.confidence_interval
        out[name] = Estimate(value, float(lo), float(hi))
    return out


@dataclass(frozen=True)
class Collapse:
    """Whether predictions collapsed onto few classes: one class takes more than `max_share` of the
    predictions, or a present class has recall below `min_recall`."""

    collapsed: bool
    reasons: list[str]
    prediction_share: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {"collapsed": self.collapsed, "reasons": self.reasons, "prediction_share": self.prediction_share}


def collapse(cm: np.ndarray, classes: Sequence[str], max_share: float = 0.5, min_recall: float = 0.1) -> Collapse:
    """The collapse check of a confusion matrix (rows = reference, columns = predicted)."""
    total = cm.sum()
    share = cm.sum(axis=0) / total if total else np.zeros(len(classes))
    reasons = [f"'{c}' takes {s:.0%} of the predictions (> {max_share:.0%})"
               for c, s in zip(classes, share, strict=True) if s > max_share]
    reasons += [f"recall of '{c}' is {r:.0%} (< {min_recall:.0%})"
                for c, r in zip(classes, recalls(cm), strict=True) if np.isfinite(r) and r < min_recall]
    return Collapse(bool(reasons), reasons, {c: round(float(s), 4) for c, s in zip(classes, share, strict=True)})


def ccc(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> float:
    """Lin's concordance correlation coefficient, 2 cov / (var_p + var_t + (mean_p - mean_t)^2)
    (population moments): 1 only when predictions equal the targets, 0 for no agreement; NaN for
    fewer than 2 rows or two constant series."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    if p.size < 2:
        return float("nan")
    denom = p.var() + t.var() + (p.mean() - t.mean()) ** 2
    if denom <= 0:
        return float("nan")
    return float(2 * np.mean((p - p.mean()) * (t - t.mean())) / denom)


def ccc_bootstrap(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray,
                  n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """CCC with a percentile bootstrap interval over utterances (rows with a NaN target left out);
    `n_resamples=0` (or under 3 rows): the interval collapses to the point value."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    ok = np.isfinite(t) & np.isfinite(p)
    p, t = p[ok], t[ok]
    value = ccc(p, t)
    if n_resamples <= 0 or p.size < 3 or not np.isfinite(value):
        return Estimate(value, value, value)
    rng = np.random.default_rng(seed)
    draws = np.array([ccc(p[i], t[i]) for i in (rng.integers(0, p.size, p.size) for _ in range(n_resamples))])
    draws = draws[np.isfinite(draws)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha]) if draws.size else (value, value)
    return Estimate(value, float(lo), float(hi))
