"""Dimensional targets (arousal, valence, dominance) for the clips of a manifest.

Every dimension lives on one scale, [-1, 1] (-1: low arousal / unpleasant / submissive, +1: high
arousal / pleasant / dominant), so corpora annotated on different scales can train one head:

* **Labelled** (a corpus whose manifest rows carry the column, e.g. a CSV corpus with `arousal`,
  IEMOCAP's 1–5 ratings): the corpus's values are rescaled linearly from the smallest and largest
  value *of that corpus in the manifest* to [-1, 1] (any numeric scale works; a constant column
  becomes 0). Rows of such a corpus without a value are missing (NaN: no loss, no score), never
  filled in.
* **Weak** (a corpus without the column: the acted corpora): arousal and valence come from the
  clip's categorical label through its place on Russell's (1980) circumplex of affect, whose
  published anchor angles are pleasure 0°, excitement 45°, arousal 90°, distress 135°,
  displeasure 180°, depression 225°, sleepiness 270°, relaxation 315° (Russell, J. A., "A
  circumplex model of affect", J. Pers. Soc. Psychol. 39(6), 1161–1178, 1980; abstract). Each class
  is put on the anchor that names it (`CIRCUMPLEX`: our choice, e.g. angry and fearful on
  distress), at valence = cos θ, arousal = sin θ; neutral at the centre. Where the NRC VAD lexicon
  v1 (Mohammad, ACL 2018) scores the emotion noun, rescaled from [0, 1] (anger .167/.865, fear
  .073/.840, disgust .052/.775, sadness .052/.288, excitement .896/.684, valence/arousal), it falls
  in the same quadrant; its other values could not be checked here, so it is not the source. The
  circumplex has no dominance: weak dominance is missing. **RAVDESS's intensity** moves arousal
  within a class: `strong` clips +`INTENSITY_SHIFT`, `normal` clips -`INTENSITY_SHIFT`.

Weak labels are weak: every clip of a class gets one point, so they measure how well a model
orders clips by class-typical arousal / valence (plus RAVDESS's intensity), not perceived affect of
each clip. Every report carries `weak_labels: true` when any target was weak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

DIMENSIONS = ("arousal", "valence", "dominance")
"""The dimensions a model may predict, in output order; arousal and valence always (weak labels
exist for every class we map), dominance only when a training corpus labels it."""
WEAK_DIMENSIONS = ("arousal", "valence")
"""What the circumplex gives."""

CIRCUMPLEX: dict[str, float | None] = {
    "happy": 0.0,          # pleasure
    "excited": 45.0,       # excitement
    "surprised": 90.0,     # arousal
    "angry": 135.0,        # distress
    "fearful": 135.0,      # distress
    "frustrated": 135.0,   # distress
    "disgust": 180.0,      # displeasure
    "contempt": 180.0,     # displeasure
    "sad": 225.0,          # depression
    "boredom": 270.0,      # sleepiness
    "calm": 315.0,         # relaxation
    "neutral": None,       # the centre
}
"""Canonical label -> Russell's (1980) anchor angle in degrees (None: the centre); a label not here
("other") has no weak target."""

INTENSITY_SHIFT = 0.2
"""Arousal added to a `strong` clip and taken from a `normal` one (RAVDESS's intensity), on the
[-1, 1] scale; a documented choice, not a published value."""
INTENSITY_SIGN = {"strong": 1.0, "normal": -1.0}

LABELLED, WEAK, MISSING = "labelled", "weak", "missing"


def weak_point(label: str) -> tuple[float, float] | None:
    """(arousal, valence) of a canonical label on the circumplex, or None (no weak target)."""
    if label not in CIRCUMPLEX:
        return None
    angle = CIRCUMPLEX[label]
    if angle is None:
        return 0.0, 0.0
    rad = math.radians(angle)
    return round(math.sin(rad), 6), round(math.cos(rad), 6)


@dataclass
class DimensionTargets:
    """Targets of some manifest rows: `values` (n, len(names)) on [-1, 1], NaN where missing."""

    names: list[str]
    values: np.ndarray
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    """corpus -> dimension -> labelled | weak | missing."""

    @property
    def weak(self) -> bool:
        """Whether any target came from the categorical mapping."""
        return any(s == WEAK for per in self.sources.values() for s in per.values())


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    if name not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[name], errors="coerce").astype(float)


def labelled_dimensions(df: pd.DataFrame) -> list[str]:
    """The dimensions a model trained on `df` predicts: arousal and valence, plus dominance when
    some corpus labels it."""
    extra = [d for d in DIMENSIONS if d not in WEAK_DIMENSIONS and _column(df, d).notna().any()]
    return [*WEAK_DIMENSIONS, *extra]


def _rescale(x: pd.Series) -> pd.Series:
    lo, hi = x.min(), x.max()
    if not np.isfinite(hi - lo) or hi == lo:
        return x * 0.0
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def dimension_targets(df: pd.DataFrame, names: Sequence[str] | None = None) -> DimensionTargets:
    """Targets for every row of `df` (columns corpus, label, intensity and the dimension columns),
    in row order; each corpus's labelled columns rescaled over its rows in `df` (see the module)."""
    names = list(names) if names is not None else labelled_dimensions(df)
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimensions {unknown} (known: {list(DIMENSIONS)})")
    out = np.full((len(df), len(names)), np.nan)
    sources: dict[str, dict[str, str]] = {}
    corpus = df["corpus"].astype(str).to_numpy()
    points = [weak_point(str(label)) for label in df["label"]]
    intensity = df["intensity"].astype(str) if "intensity" in df.columns else pd.Series("", index=df.index)
    shift = intensity.map(INTENSITY_SIGN).fillna(0.0).to_numpy() * INTENSITY_SHIFT
    for c in sorted(set(corpus)):
        rows = corpus == c
        sources[c] = {}
        for j, name in enumerate(names):
            col = _column(df, name)[rows]
            if col.notna().any():
                out[rows, j] = _rescale(col).to_numpy()
                sources[c][name] = LABELLED
            elif name in WEAK_DIMENSIONS:
                k = WEAK_DIMENSIONS.index(name)
                vals = np.array([np.nan if p is None else p[k] for p, r in zip(points, rows, strict=True) if r])
                if name == "arousal":
                    vals = np.clip(vals + shift[rows], -1.0, 1.0)
                out[rows, j] = vals
                sources[c][name] = WEAK
            else:
                sources[c][name] = MISSING
    return DimensionTargets(names=names, values=out, sources=sources)
