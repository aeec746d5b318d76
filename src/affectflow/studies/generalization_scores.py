"""How the leave-one-corpus-out study scores a held-out corpus (the protocols: offline, streamed,
streamed with pooled statistics) and how its cells add up to the table, the plot and the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import GeneralizationConfig, Params
from affectflow.metrics import collapse, confusion, macro_f1_cm, recalls, uar_cm, wa_cm
from affectflow.storage import atomic_write_json, atomic_write_text, save_figure

# ----------------------------------------------------------------------------- scoring
PROTOCOLS: dict[str, str] = {
    "offline": "predicted",
    "streamed": "predicted_streamed",
    "streamed_pooled": "predicted_streamed_pooled",
}
"""How a held-out corpus is scored → its prediction column. offline: the whole corpus at once (its
own statistics where the row standardises unknown audio by them: the case that suits per-corpus
normalisation best, and no deployment's); streamed: one clip at a time in a seeded shuffled order,
standardised by the deployment statistics of the clips before it (`affectflow.serving.deployment`:
pooled training statistics until `train.deploy_min_clips` clips); streamed_pooled: one clip at a
time with the pooled training statistics only (the behaviour before deployment statistics)."""
STREAMED = tuple(k for k in PROTOCOLS if k != "offline")
SELECTION_PROTOCOL = "streamed"
"""`select` candidates and the setting to ship are chosen on the streamed protocol (how the model
is used), by leave-one-source-corpus-out as before; a row without it falls back to offline."""


def score_cell(pred: pd.DataFrame, classes: list[str], params: Params, column: str = "predicted") -> dict[str, Any]:
    """UAR / WA / macro-F1, per-class recall, prediction histogram and collapse of one cell."""
    y_of = {c: i for i, c in enumerate(classes)}
    cm = confusion(pred["emotion"].map(y_of).to_numpy(), pred[column].map(y_of).to_numpy(), len(classes))
    col = collapse(cm, classes, params.evaluate.collapse_share, params.evaluate.collapse_recall)
    return {"uar": uar_cm(cm), "wa": wa_cm(cm), "macro_f1": macro_f1_cm(cm), "n": int(cm.sum()),
            "per_class_recall": {c: (None if np.isnan(r) else float(r))
                                 for c, r in zip(classes, recalls(cm), strict=True)},
            "prediction_histogram": {c: int(n) for c, n in zip(classes, cm.sum(axis=0), strict=True)},
            "collapsed": col.collapsed, "collapse_reasons": col.reasons, "confusion": cm.tolist()}


def stream_order(n: int, seed: int) -> np.ndarray:
    """The order the held-out clips arrive in under the streamed protocol (seeded, per cell seed)."""
    return np.random.default_rng([seed, 27]).permutation(n)


def streamed_probabilities(rec: Any, arrays: list[np.ndarray], classes: list[str], seed: int,
                           pooled: bool = False) -> np.ndarray:
    """The streamed protocol for any recognizer: `arrays` (raw features of one held-out corpus, in
    manifest order) arrive one at a time in `stream_order`; each is scored with what the model has
    seen before it (`predict_stream`: fresh deployment statistics, no labels). Probabilities over
    `classes` (renormalised), rows back in manifest order. `pooled`: the pooled training statistics
    only (the reference behaviour)."""
    from affectflow.contracts.model_folder import DeployNormalization
    from affectflow.serving.recognizer import Recognizer, predict_stream

    if pooled:
        meta = rec.meta.model_copy(update={"deploy_normalization": DeployNormalization(mode="pooled")})
        rec = Recognizer(rec.model, meta, rec.device)
    order = stream_order(len(arrays), seed)
    probs = np.empty((len(arrays), len(rec.classes)), np.float32)
    probs[order] = predict_stream(rec, [arrays[i] for i in order])
    sub = probs[:, [rec.classes.index(c) for c in classes]]
    return sub / np.maximum(sub.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)


def with_streamed(pred: pd.DataFrame, model_dir: Path, features: Path, classes: list[str], seed: int) -> pd.DataFrame:
    """`pred` (a held-out corpus's offline predictions) plus the streamed protocols' columns, from
    the cell's model folder and the feature store."""
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.serving.recognizer import load_model_dir

    rec = load_model_dir(model_dir)
    arrays = FeatureSet(features).load(rec.feature, pred["utt_id"].tolist())
    out = pred.copy()
    for protocol in STREAMED:
        probs = streamed_probabilities(rec, arrays, classes, seed, pooled=protocol == "streamed_pooled")
        out[PROTOCOLS[protocol]] = np.asarray(classes)[probs.argmax(axis=1)]
    return out


def streamed_matrix(X: np.ndarray, prior: Any, params: Params, seed: int) -> dict[str, np.ndarray]:
    """For rows outside the product (the SVM, AAEC's classifier): raw held-out features `X` (manifest
    order) standardised per streamed protocol as the product's deployment statistics would, rows
    back in manifest order."""
    from affectflow.serving.deployment import DeploymentStats

    order = stream_order(len(X), seed)
    out = {}
    tc = params.train
    for protocol in STREAMED:
        min_clips = np.inf if protocol == "streamed_pooled" else tc.deploy_min_clips
        stats = DeploymentStats(prior=prior, min_clips=min_clips, window=tc.deploy_window)  # type: ignore[arg-type]
        Z = np.empty_like(X, dtype=np.float32)
        Z[order] = np.stack(stats.normalise([X[i] for i in order]))
        out[protocol] = Z
    return out


# ----------------------------------------------------------------------------- aggregation
def _ms(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, float) * 100
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise(rows: list[dict[str, Any]], names: list[str], helds: list[str], classes: list[str],
              chosen: dict[str, Any], seconds: float, g: GeneralizationConfig) -> dict[str, Any]:
    cells = pd.DataFrame(rows)
    protocols: dict[str, dict[str, Any]] = {}
    for protocol in PROTOCOLS:
        if all(protocol in r.get("protocols", {}) for r in rows):
            scored = pd.DataFrame([{**{k: r[k] for k in ("condition", "held_out", "seed", "seconds")},
                                    **r["protocols"][protocol]} for r in rows])
            protocols[protocol] = protocol_table(scored, names, helds, classes)
    return {"conditions": names, "held_out": helds, "classes": classes, "seeds": list(g.seeds),
            "table": protocols.get("offline") or protocol_table(cells, names, helds, classes),
            "protocols": protocols, "selection": chosen, "seconds": round(seconds, 1),
            "settings": {n: g.conditions[n].model_dump(mode="json") for n in names}}


def protocol_table(cells: pd.DataFrame, names: list[str], helds: list[str], classes: list[str]) -> dict[str, Any]:
    """Per condition: per held-out corpus mean ± std UAR over seeds, per-class recall, collapses;
    the mean over corpora (per seed, then over seeds)."""
    table: dict[str, Any] = {}
    for name in names:
        c = cells[cells["condition"] == name]
        per: dict[str, Any] = {}
        for held in helds:
            h = c[c["held_out"] == held]
            m, s = _ms(h["uar"].tolist())
            rec = {k: float(np.nanmean([r[k] if r[k] is not None else np.nan for r in h["per_class_recall"]]))
                   for k in classes}
            per[held] = {"uar_mean": m, "uar_std": s, "wa_mean": _ms(h["wa"].tolist())[0],
                         "macro_f1_mean": _ms(h["macro_f1"].tolist())[0], "per_class_recall": rec,
                         "collapsed_seeds": int(h["collapsed"].sum()), "seeds": len(h),
                         "seconds": float(h["seconds"].sum())}
        over = c.groupby("seed")["uar"].mean().tolist()  # mean over held-out corpora, per seed
        m, s = _ms(over)
        table[name] = {"per_corpus": per, "mean_uar": m, "mean_uar_std": s,
                       "any_collapse": bool(c["collapsed"].any()), "seconds": float(c["seconds"].sum())}
    return table


PROTOCOL_TITLES = {
    "offline": "Offline: the whole held-out corpus scored at once (its own statistics)",
    "streamed": "Streamed: one clip at a time, shuffled, deployment statistics of the clips before it",
    "streamed_pooled": "Streamed with pooled training statistics only (the behaviour before deployment statistics)",
}


def _uar_lines(s: dict[str, Any], table: dict[str, Any]) -> list[str]:
    helds = s["held_out"]
    lines = ["| condition | " + " | ".join(helds) + " | mean over corpora | collapse |",
             "|---|" + "---|" * (len(helds) + 2)]
    for name in s["conditions"]:
        r = table[name]
        cells = [f"{r['per_corpus'][h]['uar_mean']:.1f} ± {r['per_corpus'][h]['uar_std']:.1f}"
                 + (" ⚠" if r["per_corpus"][h]["collapsed_seeds"] else "") for h in helds]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{r['mean_uar']:.1f} ± {r['mean_uar_std']:.1f}** | "
                     + ("yes" if r["any_collapse"] else "no") + " |")
    return lines


def _recall_lines(s: dict[str, Any], table: dict[str, Any]) -> list[str]:
    lines = ["| condition | held out | " + " | ".join(s["classes"]) + " |", "|---|---|" + "---|" * len(s["classes"])]
    for name in s["conditions"]:
        for h in s["held_out"]:
            rec = table[name]["per_corpus"][h]["per_class_recall"]
            lines.append(f"| {name} | {h} | " + " | ".join(f"{100 * rec[c]:.0f}" for c in s["classes"]) + " |")
    return lines


def table_md(s: dict[str, Any]) -> str:
    lines = ["# Leave-one-corpus-out generalization", "",
             f"UAR (%) on every clip of the held-out corpus, predictions over {', '.join(s['classes'])} "
             f"(chance {100 / len(s['classes']):.1f}); mean ± std over seeds {s['seeds']} (the SVM is "
             "deterministic). Trained on the other corpora; choices made inside the training corpora only. "
             "Streamed protocols: the clips arrive in a shuffled order seeded by the cell's seed.", ""]
    protocols = s.get("protocols") or {"offline": s["table"]}
    for protocol, table in protocols.items():
        lines += [f"## {PROTOCOL_TITLES[protocol]}", "", *_uar_lines(s, table), ""]
    lines += ["⚠ = at least one seed collapsed (one class > 50 % of predictions or a class recall < 10 %).", ""]
    for protocol, table in protocols.items():
        lines += [f"## Per-class recall (%, mean over seeds), {protocol}", "", *_recall_lines(s, table), ""]
    if s["selection"]:
        lines += ["", "## Choices made without the held-out corpus", "",
                  "| held out / condition | chosen | inner leave-one-source-out streamed UAR per candidate |",
                  "|---|---|---|"]
        for key, v in s["selection"].items():
            inner = ", ".join(f"{k} {100 * x:.1f}" for k, x in v["inner_uar"].items())
            lines.append(f"| {key} | {v['chosen']} | {inner} |")
    if s.get("deployment"):
        lines += ["", "## What to ship (a model trained on every corpus)", "",
                  "Chosen by leave-one-source-corpus-out over all study corpora (mean streamed UAR of each candidate "
                  "trained on all corpora but one and scored on that one); not used by any number above.", "",
                  "| condition | chosen | its settings | mean UAR per candidate |", "|---|---|---|---|"]
        for name, v in s["deployment"].items():
            per = ", ".join(f"{k} {100 * x:.1f}" for k, x in v["loso_uar"].items())
            lines.append(f"| {name} | {v['chosen']} | `{json.dumps(v['settings'])}` | {per} |")
    lines += ["", f"Wall time {s['seconds'] / 60:.1f} min.", "", "![generalization](generalization.png)", ""]
    return "\n".join(lines)


def plot(path: Path, s: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    helds, names = [*s["held_out"], "mean"], s["conditions"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(helds), 3.8))
    for i, name in enumerate(names):
        r = s["table"][name]
        means = [r["per_corpus"][h]["uar_mean"] for h in s["held_out"]] + [r["mean_uar"]]
        stds = [r["per_corpus"][h]["uar_std"] for h in s["held_out"]] + [r["mean_uar_std"]]
        ax.bar(np.arange(len(helds)) + i * width, means, width, yerr=stds, label=name, capsize=2)
    ax.axhline(100 / len(s["classes"]), color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(np.arange(len(helds)) + width * (len(names) - 1) / 2, helds)
    ax.set(ylabel="UAR (%)", title="held-out corpus", ylim=(0, 100))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def write_outputs(out: Path, s: dict[str, Any], rows: list[dict[str, Any]], table: str) -> None:
    atomic_write_json(out / "results.json", s)
    atomic_write_text(out / "table.md", table)
    cells = pd.DataFrame([{k: v for k, v in r.items() if k not in ("confusion",)} for r in rows])
    cells["per_class_recall"] = cells["per_class_recall"].map(json.dumps)
    cells["prediction_histogram"] = cells["prediction_histogram"].map(json.dumps)
    cells["collapse_reasons"] = cells["collapse_reasons"].map(json.dumps)
    if "protocols" in cells:
        cells["protocols"] = cells["protocols"].map(json.dumps)
    cells.to_parquet(out / "cells.parquet", index=False)
    plot(out / "generalization.png", s)


def log_to_mlflow(params: Params, out: Path, s: dict[str, Any]) -> None:
    import mlflow

    from affectflow.tracking import runs as tracking

    with tracking.start_run(params, "ablate-generalization", tags={"stage": "ablate_generalization"},
                            sections=("studies",)):
        metrics = {f"{name}_mean_uar": r["mean_uar"] for name, r in s["table"].items()}
        metrics |= {f"{name}_{h}_uar": r["per_corpus"][h]["uar_mean"] for name, r in s["table"].items()
                    for h in s["held_out"]}
        metrics |= {f"{name}_{protocol}_mean_uar": r["mean_uar"] for protocol in STREAMED
                    for name, r in s.get("protocols", {}).get(protocol, {}).items()}
        mlflow.log_metrics(metrics)
        for f in ("table.md", "results.json", "generalization.png"):
            mlflow.log_artifact(str(out / f))
