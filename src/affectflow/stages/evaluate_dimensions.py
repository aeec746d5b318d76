"""Evaluate's dimensional scores: CCC per dimension with bootstrap intervals, per scored set and per
corpus, written as metrics.json's typed `dimensions` section (`contracts.evaluation.DimensionScores`;
one writer: `dimensions_section`).

Targets come from `corpora.dimensions` over the whole manifest (so a labelled corpus is rescaled
the way training rescaled it); `weak_labels` is true when any scored target came from the
categorical mapping, and every report that shows these figures shows that flag.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.evaluation import DimensionScore, DimensionScores, DimensionSetScores
from affectflow.contracts.model_folder import DimensionFacts
from affectflow.corpora.dimensions import WEAK, dimension_targets
from affectflow.metrics import ccc_bootstrap

DIGITS = 4
TARGET_SUFFIX = "_target"
"""predictions.parquet: `<dimension>` is the prediction, `<dimension>_target` the target."""


def with_targets(df: pd.DataFrame, dims: DimensionFacts | None) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """`df` with a `<name>_target` column per model dimension, and each corpus's label source."""
    if dims is None:
        return df, {}
    t = dimension_targets(df, dims.names)
    out = df.copy()
    for j, name in enumerate(dims.names):
        out[name + TARGET_SUFFIX] = t.values[:, j]
    return out, t.sources


def add_predictions(out: pd.DataFrame, rows: pd.DataFrame, dimensions: np.ndarray | None,
                    names: list[str]) -> pd.DataFrame:
    """Prediction rows `out` with each dimension's prediction and target (from `rows`, same order)."""
    if dimensions is None:
        return out
    for j, name in enumerate(names):
        out[name] = dimensions[:, j]
        col = name + TARGET_SUFFIX
        out[col] = rows[col].to_numpy() if col in rows.columns else np.nan
    return out


def _ccc(pred: pd.DataFrame, name: str, params: Params) -> dict[str, float | int | None]:
    ev = params.evaluate
    ok = pred[name + TARGET_SUFFIX].notna()
    e = ccc_bootstrap(pred.loc[ok, name], pred.loc[ok, name + TARGET_SUFFIX], ev.bootstrap, ev.ci, ev.seed)
    r: dict[str, float | int | None] = {"n": int(ok.sum())}
    r |= {k: (None if not np.isfinite(v) else round(float(v), DIGITS)) for k, v in e.as_dict("ccc").items()}
    return r


def dimensions_section(sets: Mapping[str, pd.DataFrame], dims: DimensionFacts | None,
                       sources: Mapping[str, Mapping[str, str]], params: Params) -> DimensionScores | None:
    """metrics.json `dimensions`: names, `weak_labels`, label sources of the scored corpora and, per
    set (`test`, `cross:<corpus>`), CCC [interval] per dimension, pooled and per corpus."""
    if dims is None:
        return None
    scored = sorted({str(c) for p in sets.values() for c in p["corpus"].unique()})
    src = {c: dict(sources.get(c, {})) for c in scored}
    out: dict[str, dict[str, DimensionSetScores]] = {}
    for set_name, pred in sets.items():
        entry: dict[str, DimensionSetScores] = {}
        for name in dims.names:
            if name not in pred.columns:
                continue
            per = {str(c): DimensionScore.model_validate(_ccc(g, name, params))
                   for c, g in pred.groupby("corpus", sort=True)}
            entry[name] = DimensionSetScores.model_validate({**_ccc(pred, name, params), "per_corpus": per})
        out[set_name] = entry
    return DimensionScores(names=list(dims.names),
                           weak_labels=any(s == WEAK for per in src.values() for s in per.values()),
                           model_weak_labels=dims.weak_labels, label_sources=src, ci_level=params.evaluate.ci,
                           sets=out)


def ccc_cell(r: DimensionScore) -> str:
    """`CCC [low, high]`, or a dash when it could not be computed."""
    if r.ccc is None:
        return "—"
    return f"{r.ccc:.3f} [{r.ccc_ci_low:.3f}, {r.ccc_ci_high:.3f}]"


def report_lines(section: DimensionScores | None) -> list[str]:
    """report.md lines: one table per set, the weak-label flag first."""
    if section is None:
        return []
    flag = ("**weak_labels: true** — some targets come from the categorical label (Russell's circumplex, "
            "+ RAVDESS intensity), not from annotation: CCC measures how well clips are ordered by "
            "class-typical arousal / valence." if section.weak_labels else
            "weak_labels: false — every scored target is an annotated value, rescaled per corpus to [-1, 1].")
    lines = ["## Dimensions (CCC)", "", flag, ""]
    for set_name, entry in section.sets.items():
        lines += [f"{set_name}:", "", "| dimension | corpus | n | CCC [CI] | labels |", "|---|---|---|---|---|"]
        for name, r in entry.items():
            lines.append(f"| **{name}** | all | {r.n} | **{ccc_cell(r)}** | |")
            for c, pc in r.per_corpus.items():
                lines.append(f"| {name} | {c} | {pc.n} | {ccc_cell(pc)} | "
                             f"{section.label_sources.get(c, {}).get(name, '')} |")
        lines.append("")
    return lines


def mlflow_metrics(section: DimensionScores | None) -> dict[str, float]:
    """Flat `<set>_ccc_<dimension>` metrics for the evaluation's MLflow run."""
    if section is None:
        return {}
    out = {}
    for set_name, entry in section.sets.items():
        prefix = set_name.replace("cross:", "cross_")
        out |= {f"{prefix}_ccc_{n}": r.ccc for n, r in entry.items() if r.ccc is not None}
    return out
