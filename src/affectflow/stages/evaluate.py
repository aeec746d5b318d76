"""Stage — evaluate: a trained model on unseen speakers (and corpora), with confidence intervals.

Test rows are the manifest's `test` split of the corpora the model was trained on — speakers the
model never saw, neither in training nor in checkpoint selection. Reported: UAR (primary), WA and
macro-F1 with percentile-bootstrap intervals (`evaluate.bootstrap` resamples of utterances at
`evaluate.ci`), per-class recall, a confusion-matrix PNG, and per-speaker / per-gender breakdowns.
Cross-corpus (`evaluate.cross_corpus`): every clip of another corpus (only its test split when
it is a DANN target, since pretraining saw the rest unlabelled), scored over the classes that
corpus shares with the model (probabilities of the other classes are dropped before the argmax).
Outputs: `metrics.json` (the typed `affectflow.contracts.evaluation.Evaluation`: `model`, the
scored model's content hash and MLflow run; the scores once, under `test` and `cross_corpus`, each
with `calibration`: expected calibration error of the plain softmax and of the model's
temperature-scaled probabilities; DVC shows `test.uar`; `dimensions` (a model with a dimensional
head): CCC per set and corpus with the `weak_labels` flag, `stages/evaluate_dimensions.py`),
`report.md`, `confusion.png`,
`reliability.png` (+ `_<corpus>` for each cross-corpus set), `predictions.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.evaluation import Evaluation, ScoredModel, write_evaluation
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import manifest_hash, read_manifest
from affectflow.contracts.model_folder import content_hash
from affectflow.corpora.demo import is_synthetic
from affectflow.metrics import bootstrap, collapse, confusion, macro_f1_cm, recalls, uar_cm, wa_cm
from affectflow.models.calibration import ECE_BINS, reliability_of, rescale
from affectflow.serving.recognizer import Recognizer, load_model_dir, predict_scores
from affectflow.stages import evaluate_dimensions as dimension_scores
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_path, atomic_write_text, save_figure

PRIMARY = "uar"
DIGITS = 4


class EvaluationError(ValueError):
    """Evaluation cannot run; the message names the file and the field."""


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], params: Params) -> dict[str, Any]:
    """UAR / WA / macro-F1 with bootstrap intervals, per-class recall, the confusion matrix, the
    prediction histogram, chance level and the collapse check.

    Predictions range over all of `classes` (the evaluation's class set, fixed by configuration);
    the averages run over the classes present in the reference, so a subset without some class is
    scored honestly: a prediction of the missing class is simply wrong. Chance UAR is 1 / len(classes)."""
    ev = params.evaluate
    est = bootstrap(y_true, y_pred, len(classes), n_resamples=ev.bootstrap, level=ev.ci, seed=ev.seed)
    cm = confusion(y_true, y_pred, len(classes))
    out: dict[str, Any] = {"n": len(y_true)}
    for name, e in est.items():
        out.update({k: round(v, DIGITS) for k, v in e.as_dict(name).items()})
    out["per_class_recall"] = {c: (None if np.isnan(r) else round(float(r), DIGITS))
                               for c, r in zip(classes, recalls(cm), strict=True)}
    out["confusion"] = cm.tolist()
    out["predicted_over"] = list(classes)
    out["classes_present"] = [c for c, n in zip(classes, cm.sum(axis=1), strict=True) if n > 0]
    out["chance_uar"] = round(1.0 / len(classes), DIGITS)
    out["ci_level"] = ev.ci
    out["prediction_histogram"] = {c: int(n) for c, n in zip(classes, cm.sum(axis=0), strict=True)}
    out["collapse"] = collapse(cm, classes, ev.collapse_share, ev.collapse_recall).as_dict()
    return out


def breakdown(df: pd.DataFrame, by: str, n_classes: int, params: Params | None = None) -> dict[str, dict[str, Any]]:
    """UAR / WA / macro-F1 per value of `by` (speaker, gender, corpus) — who the model fails on;
    with `params`, a bootstrap interval of each group's UAR too (`uar_ci_low`, `uar_ci_high`)."""
    out = {}
    for key, g in df.groupby(by, sort=True):
        cm = confusion(g["y_true"], g["y_pred"], n_classes)
        row = {"n": len(g), "uar": round(uar_cm(cm), DIGITS),
               "wa": round(wa_cm(cm), DIGITS), "macro_f1": round(macro_f1_cm(cm), DIGITS)}
        if params is not None:
            ev = params.evaluate
            est = bootstrap(g["y_true"], g["y_pred"], n_classes, n_resamples=ev.bootstrap, level=ev.ci, seed=ev.seed,
                            metrics={"uar": uar_cm})["uar"]
            row |= {"uar_ci_low": round(est.low, DIGITS), "uar_ci_high": round(est.high, DIGITS)}
        out[str(key) or "unknown"] = row
    return out


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix (recall per cell) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    size = 1.0 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="reference", title=title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall")
    fig.tight_layout()
    return save_figure(fig, path)


def evaluation_classes(rec: Recognizer, params: Params) -> list[str]:
    """The class set predictions range over: `evaluate.classes` (in the model's order), or all of
    the model's classes. Never narrowed by the classes a test subset happens to contain."""
    wanted = params.evaluate.classes
    if not wanted:
        return rec.classes
    missing = [c for c in wanted if c not in rec.classes]
    if missing:
        raise EvaluationError(f"evaluate.classes: {missing} are not classes of the model {rec.classes}")
    if len(wanted) < 2:
        raise EvaluationError("evaluate.classes: need at least 2 classes")
    return [c for c in rec.classes if c in wanted]


def predict_rows(rec: Recognizer, rows: pd.DataFrame, fs: FeatureSet, classes: Sequence[str]) -> pd.DataFrame:
    """Predictions for manifest rows over `classes` (the evaluation class set, in the model's order);
    rows whose label is outside it are dropped by the caller."""
    scored = predict_scores(rec, fs.load(rec.feature, rows["utt_id"].tolist()),
                            corpora=rows["corpus"].astype(str).tolist(), calibrated=False,
                            whole_set=True)  # offline: a whole corpus
    probs = scored.probabilities
    bad = ~np.isfinite(scored.stacked()).all(axis=1)  # probabilities and dimensions
    if bad.any():  # argmax of NaN is class 0: a chance-level score reported as a result
        ids = rows["utt_id"].to_numpy()[bad]
        raise EvaluationError(f"{int(bad.sum())} of {len(rows)} clips get NaN or infinite model outputs (non-finite "
                              f"features or weights), e.g. {', '.join(map(str, ids[:3]))}; nothing is scored")
    cols = [rec.classes.index(c) for c in classes]
    raw = probs[:, cols]
    raw = raw / np.maximum(raw.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    sub = rescale(raw, rec.temperature)  # the folder's calibration, as predict_features applies it
    y_of = {c: i for i, c in enumerate(classes)}
    out = rows[["utt_id", "corpus", "speaker", "gender", "emotion"]].reset_index(drop=True).copy()
    out["y_true"] = rows["emotion"].map(y_of).to_numpy()
    out["y_pred"] = sub.argmax(axis=1)
    out["predicted"] = [classes[i] for i in out["y_pred"]]
    for i, c in enumerate(classes):
        out[f"p_{c}"] = sub[:, i]
    out["confidence_uncalibrated"] = raw.max(axis=1)
    return dimension_scores.add_predictions(out, rows, scored.dimensions, scored.names)


def calibration_scores(pred: pd.DataFrame, classes: Sequence[str], temperature: float) -> dict[str, Any]:
    """Expected calibration error of the top label before (plain softmax) and after the model's
    temperature, with mean confidence against accuracy."""
    correct = (pred["y_true"] == pred["y_pred"]).to_numpy()
    after = pred[[f"p_{c}" for c in classes]].to_numpy().max(axis=1)
    before = pred["confidence_uncalibrated"].to_numpy()
    return {"temperature": round(temperature, 4), "bins": ECE_BINS, "accuracy": round(float(correct.mean()), DIGITS),
            "ece_before": round(reliability_of(before, correct).ece, DIGITS),
            "ece_after": round(reliability_of(after, correct).ece, DIGITS),
            "mean_confidence_before": round(float(before.mean()), DIGITS),
            "mean_confidence_after": round(float(after.mean()), DIGITS)}


def plot_reliability(pred: pd.DataFrame, classes: Sequence[str], title: str, path: str | Path) -> Path:
    """Reliability diagram: accuracy per confidence bin, before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    correct = (pred["y_true"] == pred["y_pred"]).to_numpy()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for name, conf in (("softmax", pred["confidence_uncalibrated"].to_numpy()),
                       ("calibrated", pred[[f"p_{c}" for c in classes]].to_numpy().max(axis=1))):
        r = reliability_of(conf, correct)
        seen = r.count > 0
        ax.plot(r.confidence[seen], r.accuracy[seen], marker="o", label=f"{name} (ECE {r.ece:.3f})")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def score_predictions(pred: pd.DataFrame, classes: Sequence[str], params: Params) -> dict[str, Any]:
    res = score(pred["y_true"].to_numpy(), pred["y_pred"].to_numpy(), classes, params)
    res["classes"] = list(classes)
    res["per_speaker"] = breakdown(pred, "speaker", len(classes))
    res["per_gender"] = breakdown(pred, "gender", len(classes), params)
    res["per_corpus"] = breakdown(pred, "corpus", len(classes), params)
    return res


def _calibration_line(r: dict[str, Any]) -> str:
    c = r.get("calibration")
    if not c:
        return ""
    return (f"Calibration (temperature {c['temperature']:.3f}): expected calibration error {c['ece_before']:.3f} "
            f"(softmax) -> {c['ece_after']:.3f}; mean confidence {c['mean_confidence_before']:.3f} -> "
            f"{c['mean_confidence_after']:.3f} against accuracy {c['accuracy']:.3f}.")


def cross_corpus_names(rec: Recognizer, df: pd.DataFrame, params: Params, manifest: str | Path) -> list[str]:
    """Corpora scored beside the main test set: every `heldout` and `target` corpus of the
    manifest, plus `evaluate.cross_corpus`; never one the model was trained on."""
    trained_on = set(rec.meta.train.corpora)
    roles = df.groupby("corpus")["role"].first().to_dict()
    names = [c for c in sorted(roles) if roles[c] in ("heldout", "target") and c not in trained_on]
    for name in params.evaluate.cross_corpus:
        if name in trained_on:
            raise EvaluationError(f"evaluate.cross_corpus: '{name}' is a training corpus of this model "
                                  "(its test split is the main evaluation)")
        if name not in roles:
            raise EvaluationError(f"{manifest}: evaluate.cross_corpus names '{name}' but no row has that 'corpus'")
        if name not in names:
            names.append(name)
    return names


def cross_corpus(rec: Recognizer, df: pd.DataFrame, fs: FeatureSet, names: Sequence[str], params: Params,
                 manifest: str | Path) -> dict[str, tuple[dict[str, Any], pd.DataFrame]]:
    """Scores on other corpora: every clip of a corpus no training stage used (a DANN target: only
    its test split, since pretraining saw the rest unlabelled), predictions over the evaluation class
    set; clips whose label is outside it are not scored (counted in `dropped_labels`)."""
    classes = evaluation_classes(rec, params)
    out = {}
    for name in names:
        rows = df[df["corpus"] == name]
        is_target = bool((rows["role"] == "target").any())
        if is_target:
            rows = rows[rows["split"] == "test"]
        dropped = rows.loc[~rows["emotion"].isin(classes), "emotion"].value_counts().to_dict()
        rows = rows[rows["emotion"].isin(classes)]
        if rows["emotion"].nunique() < 2:
            raise EvaluationError(f"{manifest}: corpus '{name}' has {rows['emotion'].nunique()} of the evaluation "
                                  f"classes {classes} (field 'emotion'); need at least 2")
        pred = predict_rows(rec, rows, fs, classes)
        res = score_predictions(pred, classes, params)
        res["calibration"] = calibration_scores(pred, classes, rec.temperature)
        res["rows"] = "test split (DANN target)" if is_target else "all clips"
        res["dropped_labels"] = {str(k): int(v) for k, v in dropped.items()}
        res["test_manifest_hash"] = manifest_hash(rows)
        out[name] = (res, pred)
    return out


def _fmt(res: dict[str, Any], name: str) -> str:
    return f"{res[name]:.3f} [{res[f'{name}_ci_low']:.3f}, {res[f'{name}_ci_high']:.3f}]"


def _collapse_line(r: dict[str, Any]) -> str:
    c = r.get("collapse") or {}
    if not c.get("collapsed"):
        return "No collapse (no class takes more than half of the predictions, every class recall >= 10 %)."
    return "**COLLAPSE**: " + "; ".join(c["reasons"]) + "."


def _histogram_line(r: dict[str, Any]) -> str:
    hist = r.get("prediction_histogram") or {}
    return "Predictions: " + ", ".join(f"{c} {n}" for c, n in hist.items()) + "."


def _set_section(title: str, r: dict[str, Any], image: str) -> list[str]:
    present = r.get("classes_present") or r["classes"]
    return [f"## {title}", "",
            f"{r['n']} clips; predictions over {len(r.get('predicted_over', r['classes']))} classes "
            f"({', '.join(r.get('predicted_over', r['classes']))}), chance UAR {r.get('chance_uar', 0):.3f}; "
            f"classes present: {', '.join(present)}.", "",
            "| metric | value [CI] |", "|---|---|",
            f"| **UAR** | **{_fmt(r, 'uar')}** |", f"| WA | {_fmt(r, 'wa')} |", f"| macro-F1 | {_fmt(r, 'macro_f1')} |",
            "", "| class | recall | predicted |", "|---|---|---|",
            *(f"| {c} | {'—' if rec is None else f'{rec:.3f}'} | {(r.get('prediction_histogram') or {}).get(c, '')} |"
              for c, rec in r["per_class_recall"].items()), "",
            _collapse_line(r), "", _calibration_line(r), "", f"![confusion]({image})",
            f"![reliability]({image.replace('confusion', 'reliability')})", ""]


def report_md(evaluation: Evaluation, params: Params) -> str:
    metrics = evaluation.to_json()
    t = metrics["test"]
    level = round(params.evaluate.ci * 100)
    banner = (["> **SYNTHETIC DEMO DATA**: these figures are on generated audio, not speech; they only show "
               "that the pipeline runs.", ""] if t.get("synthetic_data") else [])
    lines = ["# Evaluation", "", *banner,
             f"Model: `{metrics['model']['dir']}` ({metrics['model']['arch']}, {len(t['classes'])} classes); "
             f"{t.get('scope', 'test split')}: {t['n']} clips from {len(t['per_speaker'])} unseen speakers.",
             f"Intervals: {level} % percentile bootstrap over utterances ({params.evaluate.bootstrap} resamples).", ""]
    lines += _set_section("Test set", t, "confusion.png")
    lines += dimension_scores.report_lines(evaluation.dimensions)
    for by in ("per_gender", "per_speaker"):
        lines += [f"## {by.replace('_', ' ').capitalize()}", "", "| group | n | UAR | WA | macro-F1 |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['uar']:.3f} | {v['wa']:.3f} | {v['macro_f1']:.3f} |" for k, v in t[by].items()]
        lines.append("")
    xc = metrics.get("cross_corpus", {})
    for name, r in xc.items():
        lines += _set_section(f"Cross-corpus: {name} ({r['rows']})", r, f"confusion_{name}.png")
        if r.get("dropped_labels"):
            lines += [f"Not scored (label outside the evaluation classes): {r['dropped_labels']}.", ""]
    if xc:
        lines += [f"Mean UAR over the {len(xc)} other corpora: {metrics['cross_corpus_mean_uar']:.3f}.", ""]
    return "\n".join(lines)


def evaluate(params: Params, model_dir: str | Path, manifest: str | Path, features_dir: str | Path,
             out_dir: str | Path, *, log_to_model_run: bool = True) -> Evaluation:
    """Score `model_dir` on the test split (+ cross-corpus); write metrics.json, report.md, PNGs.

    `log_to_model_run=False` logs into a new MLflow run instead of the model's training run (a
    champion re-scored on another test set must not overwrite its own evaluation)."""
    from affectflow.stages import get as get_stage
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = load_model_dir(model_dir)
    df, dim_sources = dimension_scores.with_targets(read_manifest(manifest), rec.meta.dimensions)
    fs = FeatureSet(features_dir)
    corpora = list(rec.meta.train.corpora) or sorted(set(df["corpus"]))
    classes = evaluation_classes(rec, params)
    rows = df[(df["split"] == "test") & df["corpus"].isin(corpora) & df["emotion"].isin(classes)]
    overlap = set(rows["speaker"]) & set(rec.meta.train.train_speakers)
    if overlap:
        raise EvaluationError(f"{manifest}: test speakers {sorted(overlap)[:5]} were training speakers of "
                              f"{model_dir}; the manifest's splits differ from the training run's")
    xc = cross_corpus(rec, df, fs, cross_corpus_names(rec, df, params, manifest), params, manifest)
    if rows.empty and not xc:
        raise EvaluationError(f"{manifest}: no test rows (field 'split' == 'test') of corpora {corpora} with "
                              f"classes {classes}, and no held-out corpus (role heldout / target) to score")
    if not rows.empty:
        pred = predict_rows(rec, rows, fs, classes)
        scope = f"test split of {', '.join(corpora)}"
    else:  # leave-corpora-out: the primary score is every held-out clip, pooled
        pred = pd.concat([p for _, p in xc.values()], ignore_index=True)
        rows = df[df["utt_id"].isin(set(pred["utt_id"]))]
        scope = f"held-out corpora {', '.join(xc)} (all their clips, pooled)"
    test = score_predictions(pred, classes, params)
    test["calibration"] = calibration_scores(pred, classes, rec.temperature)
    plot_reliability(pred, classes, "test: reliability", out / "reliability.png")
    test["scope"] = scope
    test["synthetic_data"] = bool(rows["path"].map(is_synthetic).any())
    test["test_manifest_hash"] = manifest_hash(rows)  # which test set: the registry compares like with like
    plot_confusion(np.asarray(test["confusion"]), classes, f"test UAR {test['uar']:.3f}", out / "confusion.png")
    # Which model was scored: the registry refuses to pair these metrics with any other model.
    identity = ScoredModel(content_hash=content_hash(model_dir), mlflow_run_id=(rec.meta.mlflow or {}).get("run_id"),
                           dir=str(model_dir), arch=rec.meta.arch)
    preds = [pred.assign(set="test")]
    for name, (res, p) in xc.items():
        plot_confusion(np.asarray(res["confusion"]), res["classes"], f"{name} UAR {res['uar']:.3f}",
                       out / f"confusion_{name}.png")
        plot_reliability(p, res["classes"], f"{name}: reliability", out / f"reliability_{name}.png")
        preds.append(p.assign(set=f"cross:{name}"))
    dims = dimension_scores.dimensions_section({p["set"].iloc[0]: p for p in preds if len(p)}, rec.meta.dimensions,
                                               dim_sources, params)
    evaluation = Evaluation(
        model=identity, corpora=corpora, test=test, cross_corpus={name: res for name, (res, _) in xc.items()},
        cross_corpus_mean_uar=round(float(np.mean([r["uar"] for r, _ in xc.values()])), DIGITS) if xc else None,
        dimensions=dims)
    with atomic_path(out / "predictions.parquet") as tmp:
        pd.concat(preds, ignore_index=True).to_parquet(tmp, index=False)
    write_evaluation(out / "metrics.json", evaluation)
    atomic_write_text(out / "report.md", report_md(evaluation, params))
    with tracking.reopen_run(rec.meta.mlflow if log_to_model_run else None, params, "evaluate", tags={"stage": "evaluate"},
                             sections=get_stage("evaluate").sections, model_hash=identity.content_hash):
        import mlflow

        flat = {f"test_{k}": test[k] for k in ("uar", "wa", "macro_f1")}
        flat |= {f"test_{k}_ci_{s}": test[f"{k}_ci_{s}"] for k in ("uar", "wa", "macro_f1") for s in ("low", "high")}
        flat |= {f"test_recall_{c}": r for c, r in test["per_class_recall"].items() if r is not None}
        flat |= {f"test_{k}": test["calibration"][k] for k in ("ece_before", "ece_after")}
        for name, (res, _) in xc.items():
            flat |= {f"cross_{name}_{k}": res[k] for k in ("uar", "wa", "macro_f1")}
        flat |= dimension_scores.mlflow_metrics(evaluation.dimensions)
        mlflow.log_metrics(flat)
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    return evaluation


@dataclass
class EvaluateResult:
    out_dir: Path
    evaluation: Evaluation

    @property
    def summary(self) -> dict[str, Any]:
        t = self.evaluation.test
        return {"uar": t.uar, "wa": t.wa, "macro_f1": t.macro_f1, "per_class_recall": t.per_class_recall}


def run(params: Params, inputs: Inputs, out_dir: Path) -> EvaluateResult:
    return EvaluateResult(Path(out_dir), evaluate(params, inputs["model"], inputs["manifest"], inputs["features"],
                                                  out_dir))
