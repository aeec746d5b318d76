"""`affectflow monitor`: the logged window of a deployment vs the model's training data.

Stage-shaped (`run(params, inputs, out_dir)`), not a row of the training DAG: it runs on a schedule
beside the deployment (`pipelines/monitor_pipeline.py`) and answers with an action a schedule can
act on: `retrain` (exit status `RETRAIN_EXIT`) when the incoming audio drifted from the training
data or the predictions collapsed onto one class, else `none` (exit 0; also when the window holds
fewer than `monitor.min_clips` clips: no verdict on too little traffic).

What is compared (`serving.drift` for the statistics and their references):
- the records' feature summaries (`serving.prediction_log.Summariser`: features standardised with
  the model's pooled training statistics, time-pooled, projected) against the same summaries of a
  sample of the model's training clips (its training speakers, from the feature store and
  manifest): PSI per dimension, the MMD permutation test, a domain classifier's AUC;
  drift = MMD p < `monitor.p_value` and AUC >= the larger of `monitor.auc_threshold` and the null:
  the AUC that windows of *new speakers of the training data* reach (`null_aucs`: the reference
  split by speaker, `monitor.null_splits` times) plus `monitor.null_margin`. Why the null: speech
  features tell speakers apart, so any window of unseen speakers separates from the training
  speakers somewhat (AUC about 0.85 on eGeMAPS in benchmarks/loop_study.py) and a fixed threshold
  would flag every new speaker population; the null is measured on the training data alone;
- the predicted-class shares against the training prior (total variation; `prior_shift`, reported),
  the largest share (`collapse` at `monitor.collapse_share`), the top-class confidence.

Outputs (atomic): `result.json` (the verdict and every figure), `report.md` (for the KFP UI's Markdown
artifact and MLflow), `report.html`, PNG plots.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.models.data import NormStats
from affectflow.serving import drift
from affectflow.serving.predict_log import default_location
from affectflow.serving.prediction_log import Summariser, prune, read_log
from affectflow.storage import atomic_write_json, atomic_write_text, save_figure

RETRAIN_EXIT = 3
"""Exit status of `affectflow monitor` when it asks for retraining (0: nothing to do, 1: an error)."""
ACTIONS = ("none", "retrain")


class MonitorError(ValueError):
    """Inputs the monitor cannot judge with; the message names the file and the field."""


@dataclass
class MonitorResult:
    out_dir: Path
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return RETRAIN_EXIT if self.summary["action"] == "retrain" else 0


@dataclass
class Reference:
    """The model's training data as the monitor sees it."""

    summaries: np.ndarray
    prior: dict[str, float]
    """Class shares of the training clips."""
    clips: int
    speakers: np.ndarray | None = None
    """Each summary's speaker: the null of "new speakers of the training data" (`null_aucs`)."""
    nulls: dict[tuple[int, int, int], list[float]] = field(default_factory=dict, repr=False)
    """`null_aucs` by (window size, splits, seed): computed once per reference."""


def training_reference(meta: Any, manifest: pd.DataFrame, features: FeatureSet, summariser: Summariser,
                       max_clips: int, seed: int, where: str = "manifest") -> Reference:
    """Summaries of up to `max_clips` of the model's training clips (its `train_speakers`, else the
    manifest's train split of its corpora) and the class prior of all of them."""
    speakers = set(meta.train.train_speakers)
    rows = manifest[manifest["speaker"].isin(speakers)] if speakers else manifest[
        (manifest["split"] == "train") & (manifest["corpus"].isin(meta.train.corpora or manifest["corpus"].unique()))]
    rows = rows[rows["emotion"].isin(meta.classes)]
    if rows.empty:
        raise MonitorError(f"{where}: no rows of the model's training speakers / corpora (field 'speaker'); "
                           "point --manifest at the manifest the model was trained from")
    prior = rows["emotion"].value_counts(normalize=True)
    pick = rows.sample(n=min(max_clips, len(rows)), random_state=seed)
    try:
        arrays = features.load(meta.feature, list(pick["utt_id"]))
    except KeyError as e:
        raise MonitorError(f"{features.root}: {e.args[0]}") from None
    return Reference(np.stack([summariser(a) for a in arrays]),
                     {c: float(prior.get(c, 0.0)) for c in meta.classes}, len(rows), pick["speaker"].astype(str).to_numpy())


def null_aucs(reference: Reference, n: int, splits: int, seed: int) -> list[float]:
    """Domain-classifier AUCs of windows of *new speakers of the training data*: the reference split
    by speaker (a quarter of each corpus's speakers against the rest), `n` clips of the held-out
    speakers each time, corpora mixed as in the reference. Speech features tell speakers apart, so
    a window of any new speakers separates from the training ones somewhat; drift must separate more
    than this null does."""
    if reference.speakers is None or len(set(reference.speakers)) < 2:
        return []
    key = (n, splits, seed)
    if key not in reference.nulls:
        reference.nulls[key] = _null_aucs(reference, n, splits, seed)
    return reference.nulls[key]


def _null_aucs(reference: Reference, n: int, splits: int, seed: int) -> list[float]:
    assert reference.speakers is not None
    rng = np.random.default_rng(seed)
    corpus_of = np.array([s.split("/", 1)[0] for s in reference.speakers])  # speakers are corpus-qualified
    shares = {c: float(np.mean(corpus_of == c)) for c in np.unique(corpus_of)}
    out = []
    for _ in range(splits):
        held = []
        for c in shares:  # a quarter of each corpus's speakers (a corpus with one speaker stays in)
            names = np.unique(reference.speakers[corpus_of == c])
            if len(names) >= 2:
                held.extend(rng.choice(names, size=max(1, len(names) // 4), replace=False))
        mask = np.isin(reference.speakers, held)
        window = []
        for c, share in shares.items():  # the window mixes the corpora as the reference does
            pool = np.flatnonzero(mask & (corpus_of == c))
            if len(pool):
                window.extend(rng.choice(pool, size=min(len(pool), max(1, round(n * share))), replace=False))
        if len(window) >= 5 and (~mask).sum() >= 5:
            out.append(drift.domain_auc(reference.summaries[~mask], reference.summaries[np.asarray(window)], seed))
    return out


def window(records: pd.DataFrame, meta: Any, days: float, now: dt.datetime) -> pd.DataFrame:
    """The scored records (status ok) of the last `days` days for the model's features."""
    since = pd.Timestamp(now - dt.timedelta(days=days))
    keep = (records["status"] == "ok") & (records["feature_key"] == meta.feature_key) & (records["time"] >= since)
    return records[keep & records["summary"].notna()].reset_index(drop=True)


def judge(reference: Reference, current: pd.DataFrame, classes: list[str], settings: Any) -> dict[str, Any]:
    """The verdict and its figures (pure: arrays in, a JSON-able dict out)."""
    n = len(current)
    out: dict[str, Any] = {"clips": n, "reference_clips": len(reference.summaries),
                           "thresholds": {k: getattr(settings, k) for k in (
                               "min_clips", "p_value", "auc_threshold", "null_margin", "psi_threshold",
                               "collapse_share", "prior_tv")}}
    if n < settings.min_clips:
        return {**out, "status": "insufficient", "action": "none", "drift": None, "collapse": None,
                "reason": f"{n} logged clips with speech in the window, fewer than monitor.min_clips "
                          f"({settings.min_clips}): no verdict"}
    cur = np.stack(current["summary"].to_list()).astype(np.float64)
    probs = np.stack(current["probabilities"].to_list()).astype(np.float64)
    ref = reference.summaries.astype(np.float64)
    per_dim = drift.psi(ref, cur)
    mmd = drift.mmd_test(ref, cur, settings.permutations, settings.seed)
    auc = drift.domain_auc(ref, cur, settings.seed)
    shares = drift.class_shares(probs, len(classes))
    prior = [reference.prior.get(c, 0.0) for c in classes]
    tv = drift.total_variation(shares, prior)
    null = null_aucs(reference, n, settings.null_splits, settings.seed)
    needed = max([settings.auc_threshold, *(a + settings.null_margin for a in null)])
    drifted = bool(mmd.p_value < settings.p_value and auc >= needed)
    top = int(np.argmax(shares))
    collapsed = bool(shares[top] >= settings.collapse_share)
    reasons = []
    if drifted:
        reasons.append(f"drift: MMD p={mmd.p_value:.4f} < {settings.p_value} and domain AUC {auc:.3f} >= "
                       f"{needed:.3f}")
    if collapsed:
        reasons.append(f"collapse: {shares[top]:.0%} of the predictions are '{classes[top]}' "
                       f"(>= {settings.collapse_share:.0%})")
    return {**out, "status": "judged", "action": "retrain" if drifted or collapsed else "none",
            "drift": drifted, "collapse": collapsed, "prior_shift": bool(tv >= settings.prior_tv),
            "reason": "; ".join(reasons) or "no drift, no collapse",
            "mmd2": mmd.mmd2, "mmd_p_value": mmd.p_value, "domain_auc": auc, "auc_needed": needed,
            "null_aucs": [round(a, 4) for a in null],
            "psi": [round(float(x), 4) for x in per_dim], "psi_max": float(per_dim.max()),
            "psi_major": int((per_dim > settings.psi_threshold).sum()),
            "class_shares": {c: float(s) for c, s in zip(classes, shares, strict=True)},
            "training_prior": dict(zip(classes, prior, strict=True)), "prior_tv": tv,
            "confidence": drift.confidence(probs)}


# ----------------------------------------------------------------------------- report
def _plots(result: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result["status"] != "judged":
        return []
    names = []
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(range(len(result["psi"])), result["psi"], color="tab:blue")
    ax.axhline(result["thresholds"]["psi_threshold"], color="tab:red", ls="--", lw=1)
    ax.set(xlabel="summary dimension", ylabel="PSI", title="drift per summary dimension")
    save_figure(fig, out_dir / "psi.png")
    names.append("psi.png")
    fig, ax = plt.subplots(figsize=(6, 2.6))
    classes = list(result["class_shares"])
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [result["training_prior"][c] for c in classes], 0.4, label="training prior")
    ax.bar(x + 0.2, [result["class_shares"][c] for c in classes], 0.4, label="predicted (window)")
    ax.set_xticks(x, classes)
    ax.set(ylabel="share", title="predicted classes vs training prior")
    ax.legend()
    save_figure(fig, out_dir / "classes.png")
    names.append("classes.png")
    conf = result["confidence"]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    edges = conf["edges"]
    ax.bar(edges[:-1], conf["histogram"], width=np.diff(edges), align="edge", color="tab:green")
    ax.set(xlabel="top-class probability", ylabel="clips", title="confidence")
    save_figure(fig, out_dir / "confidence.png")
    names.append("confidence.png")
    return names


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# Monitor: action **{result['action']}**", "", f"{result['reason']}.", "",
             f"Window: {result['clips']} logged clips with speech ({result.get('window', '')}); reference: "
             f"{result['reference_clips']} training clips.", ""]
    if result["status"] == "judged":
        lines += ["| check | value | threshold | flag |", "|---|---|---|---|",
                  f"| MMD permutation p | {result['mmd_p_value']:.4f} | < {result['thresholds']['p_value']} | |",
                  f"| domain-classifier AUC | {result['domain_auc']:.3f} | >= {result['auc_needed']:.3f} (monitor."
                  f"auc_threshold, or new training speakers' AUC + null_margin) | {'**drift**' if result['drift'] else 'ok'} |",
                  f"| largest PSI | {result['psi_max']:.3f} ({result['psi_major']} dims > "
                  f"{result['thresholds']['psi_threshold']}) | reported | |",
                  f"| largest class share | {max(result['class_shares'].values()):.2f} | >= "
                  f"{result['thresholds']['collapse_share']} | {'**collapse**' if result['collapse'] else 'ok'} |",
                  f"| prior TV distance | {result['prior_tv']:.3f} | >= {result['thresholds']['prior_tv']} | "
                  f"{'prior shift' if result['prior_shift'] else 'ok'} |",
                  f"| mean confidence | {result['confidence']['mean']:.3f} | | |", "",
                  "| class | training prior | predicted |", "|---|---|---|"]
        lines += [f"| {c} | {result['training_prior'][c]:.3f} | {s:.3f} |" for c, s in result["class_shares"].items()]
        lines += ["", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def _html(md: str) -> str:
    """A self-contained page of the Markdown report (tables and images; no Markdown library needed)."""
    body = []
    rows: list[str] = []
    for line in md.splitlines():
        if line.startswith("|"):
            if set(line) <= set("|-"):
                continue
            cells = "".join(f"<td>{html.escape(c.strip()).replace('**', '')}</td>" for c in line.strip("|").split("|"))
            rows.append(f"<tr>{cells}</tr>")
            continue
        if rows:
            body.append("<table border=1 cellpadding=4>" + "".join(rows) + "</table>")
            rows = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:]).replace('**', '')}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            body.append(f'<img src="{html.escape(src)}">')
        elif line:
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    if rows:
        body.append("<table border=1 cellpadding=4>" + "".join(rows) + "</table>")
    return "<!doctype html><meta charset=utf-8><title>affectflow monitor</title>" + "\n".join(body) + "\n"


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, out_dir)
    md = markdown(result, plots)
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "report.html", _html(md))
    atomic_write_json(out_dir / "result.json", result)


# ----------------------------------------------------------------------------- the command
def run(params: Params, inputs: dict[str, Any], out_dir: Path, now: dt.datetime | None = None) -> MonitorResult:
    """inputs: `model` (a model folder or MLflow URI), `log` (default: `monitor.log` / the workdir's),
    `features` and `manifest` (default: the workdir's) for the training reference."""
    from affectflow.serving.predict import load_backend

    cfg = params.monitor
    now = now or dt.datetime.now(dt.UTC)
    backend = load_backend(params, inputs.get("model"), deployment=False)
    rec = getattr(backend, "rec", None)
    if rec is None:
        raise MonitorError(f"model {backend.uri}: not an affectflow recognizer; the monitor needs its training "
                           "statistics and feature kind")
    meta = rec.meta
    log_at = str(inputs.get("log") or default_location(params))
    pruned = prune(log_at, cfg.retention_days, now=now)
    wd = params.workdir()
    manifest_path = Path(inputs.get("manifest") or wd / "ingest" / "manifest.parquet")
    summariser = Summariser(NormStats.from_dict(meta.normalization), meta.feature, cfg.summary_dims)
    reference = training_reference(meta, read_manifest(manifest_path), FeatureSet(inputs.get("features") or wd / "features"),
                                   summariser, cfg.reference_clips, cfg.seed, str(manifest_path))
    current = window(read_log(log_at), meta, cfg.window_days, now)
    result = judge(reference, current, list(meta.classes), cfg)
    result.update({"model": backend.uri, "log": log_at, "pruned_files": pruned,
                   "window": f"last {cfg.window_days:g} days to {now:%Y-%m-%d %H:%M} UTC",
                   "time": now.isoformat()})
    write_report(result, Path(out_dir))
    return MonitorResult(Path(out_dir), result)


def result_json(result: MonitorResult) -> str:
    return json.dumps(result.summary, indent=2)
