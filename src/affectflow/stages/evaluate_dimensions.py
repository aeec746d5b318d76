"""Evaluate's dimensional scores: CCC per dimension with bootstrap intervals, per scored set and per
corpus, written as metrics.json's `dimensions` section (one writer: `dimensions_section`).

Targets come from `corpora.dimensions` over the whole manifest (so a labelled corpus is rescaled
the way training rescaled it); `weak_labels` is true when any scored target came from the
categorical mapping, and every report that shows these figures shows that flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params
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


def _scores(pred: pd.DataFrame, name: str, params: Params) -> dict[str, Any]:
    ev = params.evaluate
    ok = pred[name + TARGET_SUFFIX].notna()
    e = ccc_bootstrap(pred.loc[ok, name], pred.loc[ok, name + TARGET_SUFFIX], ev.bootstrap, ev.ci, ev.seed)
    r = {"n": int(ok.sum())}
    r |= {k: (None if not np.isfinite(v) else round(float(v), DIGITS)) for k, v in e.as_dict("ccc").items()}
    return r


def dimensions_section(sets: Mapping[str, pd.DataFrame], dims: DimensionFacts | None,
                       sources: Mapping[str, Mapping[str, str]], params: Params) -> dict[str, Any] | None:
    """metrics.json `dimensions`: names, `weak_labels`, label sources of the scored corpora and, per
    set (`test`, `cross:<corpus>`), CCC [interval] per dimension, pooled and per corpus."""
    if dims is None:
        return None
    scored = sorted({str(c) for p in sets.values() for c in p["corpus"].unique()})
    src = {c: dict(sources.get(c, {})) for c in scored}
    out: dict[str, Any] = {
        "names": list(dims.names),
        "weak_labels": any(s == WEAK for per in src.values() for s in per.values()),
        "model_weak_labels": dims.weak_labels,
        "label_sources": src,
        "ci_level": params.evaluate.ci,
        "sets": {},
    }
    for set_name, pred in sets.items():
        entry: dict[str, Any] = {}
        for name in dims.names:
            if name not in pred.columns:
                continue
            row = _scores(pred, name, params)
            row["per_corpus"] = {str(c): _scores(g, name, params) for c, g in pred.groupby("corpus", sort=True)}
            entry[name] = row
        out["sets"][set_name] = entry
    return out


def _ccc_cell(r: Mapping[str, Any]) -> str:
    if r.get("ccc") is None:
        return "—"
    return f"{r['ccc']:.3f} [{r['ccc_ci_low']:.3f}, {r['ccc_ci_high']:.3f}]"


def report_lines(section: Mapping[str, Any] | None) -> list[str]:
    """report.md lines: one table per set, the weak-label flag first."""
    if not section:
        return []
    flag = ("**weak_labels: true** — some targets come from the categorical label (Russell's circumplex, "
            "+ RAVDESS intensity), not from annotation: CCC measures how well clips are ordered by "
            "class-typical arousal / valence." if section["weak_labels"] else
            "weak_labels: false — every scored target is an annotated value, rescaled per corpus to [-1, 1].")
    lines = ["## Dimensions (CCC)", "", flag, ""]
    for set_name, entry in section["sets"].items():
        lines += [f"{set_name}:", "", "| dimension | corpus | n | CCC [CI] | labels |", "|---|---|---|---|---|"]
        for name, r in entry.items():
            lines.append(f"| **{name}** | all | {r['n']} | **{_ccc_cell(r)}** | |")
            for c, pc in r["per_corpus"].items():
                lines.append(f"| {name} | {c} | {pc['n']} | {_ccc_cell(pc)} | "
                             f"{section['label_sources'].get(c, {}).get(name, '')} |")
        lines.append("")
    return lines


def mlflow_metrics(section: Mapping[str, Any] | None) -> dict[str, float]:
    """Flat `<set>_ccc_<dimension>` metrics for the evaluation's MLflow run."""
    if not section:
        return {}
    out = {}
    for set_name, entry in section["sets"].items():
        prefix = set_name.replace("cross:", "cross_")
        out |= {f"{prefix}_ccc_{n}": r["ccc"] for n, r in entry.items() if r.get("ccc") is not None}
    return out
